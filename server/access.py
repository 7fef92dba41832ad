"""Who may call what: API tokens bound to a tenant and a role, per-token rate limits, and an
append-only audit log, kept in ``access.sqlite`` in the data directory beside the catalogue
(the library knows which tenant owns a reference, nothing of tokens).

A token reads ``cm_<id>_<secret>``. The id names it in logs, lists and the audit; of the
secret (32 random bytes) only its SHA-256 is stored, so a copy of the data directory holds no
usable token. The secret is random, not chosen by a person, so a fast hash is enough: there is
no dictionary to try.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from index.store import DEFAULT_TENANT, NotFoundError
from server.options import AuthOptions

log = logging.getLogger("clipmatch.access")

ADMIN, RIGHTS_HOLDER, CRAWLER = "admin", "rights_holder", "crawler"
ROLES = (ADMIN, RIGHTS_HOLDER, CRAWLER)
ACTIONS = ("register", "delete", "match", "token_create", "token_revoke")
TENANT = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
TOKEN = re.compile(r"cm_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
MAX_LABEL = 200

DATABASE = "access.sqlite"
ADMIN_TOKEN_FILE = "admin-token"
"""Where the first start keeps the admin token it issues, readable by its owner only."""

FLUSH_S = 0.25
"""Audit rows of matches wait in memory at most this long, then are committed together: a
match pays for appending to a list, not for a commit to disk. Registrations, deletions and
token changes are committed before their call returns."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS token (
    token_id TEXT PRIMARY KEY,
    secret_sha256 TEXT NOT NULL,
    tenant TEXT NOT NULL,
    role TEXT NOT NULL,
    label TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    revoked_at REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    tenant TEXT NOT NULL,
    token_id TEXT NOT NULL,
    role TEXT NOT NULL,
    action TEXT NOT NULL,
    reference_id TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS audit_tenant ON audit (tenant, id);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""


@dataclass(frozen=True)
class Principal:
    """Who is calling: their token's id, tenant and role."""

    token_id: str
    tenant: str
    role: str

    @property
    def scope(self) -> str | None:
        """The tenant whose references the caller sees: None (every tenant's) for an admin."""
        return None if self.role == ADMIN else self.tenant


NO_AUTH = Principal("no-auth", DEFAULT_TENANT, ADMIN)
"""Every caller of a server started with --no-auth."""


@dataclass(frozen=True)
class TokenInfo:
    """A token as listed: never its secret."""

    token_id: str
    tenant: str
    role: str
    label: str
    created_at: float
    revoked_at: float = 0.0
    """0 while the token is valid"""


@dataclass(frozen=True)
class AuditEntry:
    """One recorded action; ``detail`` is a JSON object."""

    id: int
    at: float
    tenant: str
    token_id: str
    role: str
    action: str
    reference_id: str
    detail: str


class Unauthenticated(Exception):
    """No API token, or not a valid one; the message says how to send one."""


class PermissionDenied(Exception):
    """The caller's role may not make this call."""


class RateLimited(Exception):
    """The caller's token is over its rate; the message names the limit and when to retry."""


class LockedOut(Exception):
    """The change would leave no valid admin token, so tokens could no longer be managed."""


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _parse(token: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed token."""
    parts = TOKEN.fullmatch(token)
    return (parts[1], parts[2]) if parts else None


def new_token() -> str:
    return f"cm_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"


class Access:
    """The tokens and the audit log of one data directory. Thread-safe.

    Tokens are few and read on every call, so they are kept in memory as well (this process
    is the only writer of the file)."""

    def __init__(self, data_dir: Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(data_dir / DATABASE, check_same_thread=False,
                                   isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._tokens: dict[str, tuple[str, TokenInfo]] = {
            row[0]: (row[1], TokenInfo(row[0], *row[2:])) for row in self._db.execute(
                "SELECT token_id, secret_sha256, tenant, role, label, created_at, revoked_at"
                " FROM token ORDER BY created_at")}
        self._pending: list[tuple[Any, ...]] = []
        self._pending_lock = threading.Lock()
        self._closing = threading.Event()
        self._flusher = threading.Thread(target=self._flush_regularly, name="audit",
                                         daemon=True)
        self._flusher.start()

    def close(self) -> None:
        self._closing.set()
        self._flusher.join()
        self.flush()
        with self._lock:
            self._db.close()

    # -- tokens ------------------------------------------------------------------------

    def create_token(self, tenant: str, role: str, label: str = "") -> tuple[str, TokenInfo]:
        """A new token for ``tenant`` with ``role``: the token itself (shown once, only its
        hash is kept) and its record. ValueError, saying what is allowed, for a bad field."""
        if not TENANT.fullmatch(tenant):
            raise ValueError(f"tenant {tenant!r} is not a valid tenant name: 1 to 63 lower-case "
                             "letters, digits, '_' or '-', starting with a letter or digit")
        if role not in ROLES:
            raise ValueError(f"role {role!r} is not one of {', '.join(ROLES)}")
        if len(label) > MAX_LABEL:
            raise ValueError(f"label is {len(label)} characters long, at most {MAX_LABEL} "
                             "are kept")
        token = new_token()
        return token, self._insert(*_parse(token), tenant, role, label)

    def _insert(self, token_id: str, secret: str, tenant: str, role: str, label: str
                ) -> TokenInfo:
        info, digest = TokenInfo(token_id, tenant, role, label, time.time()), _digest(secret)
        with self._lock:
            self._db.execute(
                "INSERT INTO token (token_id, secret_sha256, tenant, role, label, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)", (token_id, digest, tenant, role, label,
                                               info.created_at))
            self._tokens[token_id] = (digest, info)
        return info

    def adopt(self, token: str, tenant: str, role: str, label: str) -> bool:
        """Store a token issued elsewhere (the admin token file of a start that crashed
        before storing it); False if it is malformed or its id is already known."""
        parsed = _parse(token)
        if parsed is None or parsed[0] in self._tokens:
            return False
        self._insert(*parsed, tenant, role, label)
        return True

    def authenticate(self, token: str) -> Principal | None:
        """The caller a token stands for; None if it is malformed, unknown, has the wrong
        secret or was revoked."""
        parsed = _parse(token)
        stored = None if parsed is None else self._tokens.get(parsed[0])
        if stored is None:
            return None
        digest, info = stored
        if info.revoked_at or not hmac.compare_digest(_digest(parsed[1]), digest):
            return None
        return Principal(info.token_id, info.tenant, info.role)

    def revoke(self, token_id: str) -> TokenInfo:
        """Revoke a token (``<id>`` or ``cm_<id>``) for good: calls with it are refused from
        now on. NotFoundError for an unknown id; LockedOut for the last valid admin token."""
        token_id = token_id.removeprefix("cm_")
        with self._lock:
            if token_id not in self._tokens:
                raise NotFoundError(f"no token with id {token_id!r}")
            digest, info = self._tokens[token_id]
            if info.revoked_at:
                return info
            if info.role == ADMIN and not any(
                    other.role == ADMIN and not other.revoked_at and other.token_id != token_id
                    for _, other in self._tokens.values()):
                raise LockedOut(f"cm_{token_id} is the last valid admin token: create another "
                                "admin token first, or no one could manage tokens any more")
            info = replace(info, revoked_at=time.time())
            self._db.execute("UPDATE token SET revoked_at = ? WHERE token_id = ?",
                             (info.revoked_at, token_id))
            self._tokens[token_id] = (digest, info)
        return info

    def tokens(self, tenant: str = "") -> list[TokenInfo]:
        """Every token (of ``tenant``, if given), oldest first."""
        with self._lock:
            return [info for _, info in self._tokens.values()
                    if not tenant or info.tenant == tenant]

    def has_admin(self) -> bool:
        """Whether some admin token is valid."""
        return any(info.role == ADMIN and not info.revoked_at for info in self.tokens())

    # -- audit -------------------------------------------------------------------------

    def record(self, action: str, by: Principal, *, tenant: str, reference_id: str = "",
               detail: dict[str, Any] | None = None, durable: bool = True) -> None:
        """Append an audit row: ``by`` did ``action`` concerning ``tenant``. ``durable`` rows
        are committed before this returns; others within FLUSH_S (a crash may lose those)."""
        row = (time.time(), tenant, by.token_id, by.role, action, reference_id,
               json.dumps(detail or {}, ensure_ascii=False))
        with self._pending_lock:
            self._pending.append(row)
        if durable:
            self.flush()

    def flush(self) -> None:
        """Commit the rows waiting in memory, in one transaction."""
        with self._lock:
            with self._pending_lock:
                rows, self._pending = self._pending, []
            if not rows:
                return
            try:
                self._db.execute("BEGIN")
                self._db.executemany(
                    "INSERT INTO audit (at, tenant, token_id, role, action, reference_id,"
                    " detail) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
                self._db.execute("COMMIT")
            except sqlite3.Error:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                with self._pending_lock:  # kept for the next flush
                    self._pending[:0] = rows
                raise

    def _flush_regularly(self) -> None:
        while not self._closing.wait(FLUSH_S):
            try:
                self.flush()
            except sqlite3.Error:
                log.exception("the audit log cannot be written; its rows are kept in memory "
                              "and tried again")

    def query(self, *, tenant: str = "", action: str = "", since: float = 0.0,
              until: float = 0.0, page_size: int = 100, page_token: str = ""
              ) -> tuple[list[AuditEntry], str]:
        """A page of audit rows, oldest first, and the next page's token ("" at the end).
        Empty or 0 filters match every row; ``since <= at < until``. ValueError for a filter
        or token that cannot be used."""
        if action and action not in ACTIONS:
            raise ValueError(f"action {action!r} is not one of {', '.join(ACTIONS)}")
        for name, value in (("since", since), ("until", until)):
            if not 0.0 <= value < float("inf"):
                raise ValueError(f"{name} must be seconds since the Unix epoch (0 for no "
                                 f"bound), got {value}")
        if page_token and not page_token.isdigit():
            raise ValueError(f"page_token {page_token!r} is not one this server issued")
        self.flush()
        with self._lock:
            rows = self._db.execute(
                "SELECT id, at, tenant, token_id, role, action, reference_id, detail FROM audit"
                " WHERE id > :after AND (:tenant = '' OR tenant = :tenant)"
                " AND (:action = '' OR action = :action) AND at >= :since"
                " AND (:until = 0 OR at < :until) ORDER BY id LIMIT :limit",
                {"after": int(page_token or 0), "tenant": tenant, "action": action,
                 "since": since, "until": until, "limit": page_size + 1}).fetchall()
        entries = [AuditEntry(*row) for row in rows[:page_size]]
        return entries, str(entries[-1].id) if len(rows) > page_size else ""


def ensure_admin_token(access: Access, data_dir: Path) -> str | None:
    """On a first start, issue an admin token (of the default tenant: an admin sees every
    tenant's references, and registers as that one), kept in ``<data dir>/admin-token``,
    mode 0600; returns it, to be shown this once. None if some admin token is valid.

    The file is written and synced before the token is stored, so a crash in between leaves
    a file the next start adopts (and shows), never a stored token nobody has. LockedOut if
    no admin token is valid and the file holds one that cannot be used (revoked)."""
    if access.has_admin():
        return None
    path = data_dir / ADMIN_TOKEN_FILE
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = new_token()
        _write_private(path, token + "\n")
    if not access.adopt(token, DEFAULT_TENANT, ADMIN, "first start"):
        raise LockedOut(f"no admin token is valid, and the one in {path} cannot be used: "
                        "remove that file and start the server again to issue a new one")
    return token


def token_id(token: str) -> str:
    """The id of a well-formed token ("" otherwise)."""
    return (_parse(token) or ("", ""))[0]


def _write_private(path: Path, text: str) -> None:
    """Create ``path`` readable and writable by its owner only (never over an existing
    file), durably: the file and the directory entry are synced."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class RateLimiter:
    """A token bucket per key (a token id): ``rate`` calls a second on average and up to
    ``burst`` at once; a rate of 0 lets every call through. Thread-safe."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def wait_s(self, key: str) -> float:
        """0 if a call of ``key`` may go ahead now (it is counted), else how long until one
        may."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        with self._lock:
            level, then = self._buckets.get(key, (float(self.burst), now))
            level = min(float(self.burst), level + (now - then) * self.rate)
            allowed = level >= 1.0
            self._buckets[key] = (level - allowed, now)
        return 0.0 if allowed else (1.0 - level) / self.rate


class Guard:
    """Admits a call or refuses it, saying why: who is calling (the token in its
    ``authorization`` metadata), whether their role may make the call, and whether their
    token is within its rate. With auth off, every caller is NO_AUTH, an admin."""

    def __init__(self, access: Access, data_dir: Path, options: AuthOptions) -> None:
        self.access = access
        self._enabled = options.enabled
        self._limiter = RateLimiter(options.rate_limit_rps, options.rate_limit_burst)
        self._how = ("send an API token in the authorization metadata as 'Bearer cm_...' (the "
                     "clipmatch CLI and SDK read it from CLIPMATCH_TOKEN); the admin token is "
                     f"in {data_dir / ADMIN_TOKEN_FILE}")

    def admit(self, metadata: Iterable[tuple[str, str]], method: str,
              roles: Sequence[str]) -> Principal:
        """The caller of ``method``, if one of ``roles`` may make it and their token is within
        its rate; else Unauthenticated, PermissionDenied or RateLimited."""
        if not self._enabled:
            return NO_AUTH
        caller = self._authenticate(metadata)
        if caller.role not in roles:
            raise PermissionDenied(
                f"{method} needs a token with role {' or '.join(roles)}; this one "
                f"(cm_{caller.token_id}) is a {caller.role} token of tenant {caller.tenant}")
        wait_s = self._limiter.wait_s(caller.token_id)
        if wait_s:
            raise RateLimited(
                f"token cm_{caller.token_id} exceeded {self._limiter.rate:g} requests/s "
                f"(--rate-limit-rps; bursts of {self._limiter.burst}, --rate-limit-burst): "
                f"retry after {wait_s:.2f} s")
        return caller

    def _authenticate(self, metadata: Iterable[tuple[str, str]]) -> Principal:
        values = [value for key, value in metadata if key == "authorization"]
        if not values:
            raise Unauthenticated(f"this call needs an API token: {self._how}")
        scheme, _, token = values[0].strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or _parse(token) is None:
            raise Unauthenticated(
                f"the authorization metadata does not hold a clipmatch API token: {self._how}")
        caller = self.access.authenticate(token)
        if caller is None:
            raise Unauthenticated(f"the API token cm_{token_id(token)} is not valid (unknown, "
                                  f"mistyped or revoked): {self._how}")
        return caller
