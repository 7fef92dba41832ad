"""Access control against the real server: every RPC under every role and bad credential,
tenants kept apart, the admin token a first start issues, --no-auth, per-token rate limits
and the audit log."""

from __future__ import annotations

import json
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from client.sdk import ClipmatchClient, ClipmatchError
from clipmatch.v1 import clipmatch_pb2 as pb
from clipmatch.v1 import clipmatch_pb2_grpc as pb_grpc
from fingerprint.audio import band_frames
from fingerprint.decode import SAMPLE_RATE as LIBRARY_RATE
from fingerprint.decode import decode_audio
from server.access import ADMIN_TOKEN_FILE, CRAWLER, DEFAULT_TENANT, RIGHTS_HOLDER
from tests.conftest import REPO, SERVER_COMMAND, ServerProcess
from tests.media import Clip, fixture
from tests.test_service import assert_status

REFERENCE_RPCS = ("CreateReference", "GetReference", "ListReferences", "DeleteReference")
MATCH_RPCS = ("MatchClip", "MatchFingerprint")
ADMIN_RPCS = ("CreateToken", "ListTokens", "RevokeToken", "QueryAudit")
ALLOWED = {"admin": {*REFERENCE_RPCS, *MATCH_RPCS, *ADMIN_RPCS},
           "rights_holder": {*REFERENCE_RPCS, *MATCH_RPCS}, "crawler": set(MATCH_RPCS)}
BAD_CREDENTIALS = ("no_token", "malformed", "wrong_secret", "revoked")


@pytest.fixture(scope="module")
def tokens(server: ServerProcess) -> dict[str, str]:
    """Tokens by name: "admin", "<role>_<tenant>" for tenants a and b, and bad ones."""
    with server.client() as admin:
        made = {f"{role}_{tenant}": admin.create_token(tenant, role)["token"]
                for tenant in ("a", "b") for role in (RIGHTS_HOLDER, CRAWLER)}
        revoked = admin.create_token("a", RIGHTS_HOLDER, "revoked at once")
        admin.revoke_token(revoked["info"]["token_id"])
    last = server.admin_token[-1]
    return {"admin": server.admin_token, **made, "revoked": revoked["token"],
            "no_token": "", "malformed": "cm_not-a-token",
            "wrong_secret": server.admin_token[:-1] + ("B" if last == "A" else "A")}


@pytest.fixture(scope="module")
def owned(server: ServerProcess, tokens: dict[str, str]) -> dict[str, dict[str, Any]]:
    """battle and knolls registered by tenant a's rights holder, knolls (the same bytes) by
    b's too."""
    references = {}
    for tenant, names in (("a", ("battle", "knolls")), ("b", ("knolls",))):
        with server.client(tokens[f"rights_holder_{tenant}"]) as client:
            references |= {f"{tenant}_{name}": client.register(fixture(name)) for name in names}
    return references


def _frames(path: Path) -> Any:
    """The band frames a crawler computes of ``path`` and sends to MatchFingerprint."""
    return band_frames(decode_audio(path), LIBRARY_RATE)


def _call(rpc: str, client: ClipmatchClient, server: ServerProcess, tokens: dict[str, str],
          owned: dict[str, dict[str, Any]], directory: Path) -> tuple[Callable[[], Any], str]:
    """The call of ``rpc`` a permitted caller makes successfully (set up by the admin), and
    the reference it deletes (registered by tenant a's rights holder) if it is a deletion."""
    if rpc == "DeleteReference":
        with server.client(tokens["rights_holder_a"]) as holder:
            victim = holder.register(Clip("loyalists", 9.0, 4.0).write(directory))
        return lambda: client.delete(victim["reference_id"]), victim["reference_id"]
    if rpc == "RevokeToken":
        with server.client() as admin:
            doomed = admin.create_token("c", CRAWLER, "revoked in the role matrix")["info"]
        return lambda: client.revoke_token(doomed["token_id"]), ""
    clip = Clip("battle", 4.0, 6.0).write(directory)
    return {
        "CreateReference": lambda: client.register(Clip("loyalists", 3.0, 4.0).write(directory)),
        "GetReference": lambda: client.get(owned["a_battle"]["reference_id"]),
        "ListReferences": client.list,
        "MatchClip": lambda: client.match(clip),
        "MatchFingerprint": lambda: client.match_fingerprint(_frames(clip)),
        "CreateToken": lambda: client.create_token("c", CRAWLER, "made in the role matrix"),
        "ListTokens": client.list_tokens,
        "QueryAudit": client.audit,
    }[rpc], ""


def _rpc_event(server: ServerProcess, method: str, status: str) -> dict[str, Any]:
    """The latest log line of a ``method`` call that ended with ``status`` (waiting for it:
    the log is read as it comes)."""
    deadline = time.monotonic() + 10
    while True:
        found = [e for e in server.events("rpc") if (e["method"], e["status"]) == (
            method, status)]
        if found:
            return found[-1]
        assert time.monotonic() < deadline, server.logs[-5:]
        time.sleep(0.02)


@pytest.mark.parametrize("rpc", [*REFERENCE_RPCS, *MATCH_RPCS, *ADMIN_RPCS])
@pytest.mark.parametrize("credential", [*ALLOWED, *BAD_CREDENTIALS])
def test_role_matrix(server: ServerProcess, tokens: dict[str, str],
                     owned: dict[str, dict[str, Any]], tmp_path: Path,
                     monkeypatch: pytest.MonkeyPatch, credential: str, rpc: str) -> None:
    """Each role may make exactly its calls (a rights holder and a crawler of tenant a, on
    a's references); no token, a malformed one, a wrong secret or a revoked token may make
    none. A refused upload is refused before its stream is read; a refused deletion deletes
    nothing."""
    monkeypatch.delenv("CLIPMATCH_TOKEN", raising=False)  # "no_token" must send none
    name = credential if credential in ("admin", *BAD_CREDENTIALS) else f"{credential}_a"
    expected = ("UNAUTHENTICATED" if credential in BAD_CREDENTIALS else
                "OK" if rpc in ALLOWED[credential] else "PERMISSION_DENIED")
    with ClipmatchClient(server.target, token=tokens[name] or None) as client:
        call, victim = _call(rpc, client, server, tokens, owned, tmp_path)
        if expected == "OK":
            made = call()
            if rpc == "CreateReference":  # leave the catalogue as it was
                with server.client() as admin:
                    admin.delete(made["reference_id"])
            return
        message = assert_status(call, expected)
    if expected == "UNAUTHENTICATED":
        assert "Bearer cm_" in message and ADMIN_TOKEN_FILE in message
    else:
        assert "needs a token with role admin" in message and f"a {credential} token" in message
    if rpc in ("CreateReference", "MatchClip"):
        assert "filename" not in _rpc_event(server, rpc, expected)
    if victim:
        with server.client() as admin:
            admin.delete(victim)  # still there


@pytest.mark.parametrize("header", ["", "Basic Zm9vOmJhcg==", "Bearer", "bearer ", "cm_x_y",
                                    "Bearer cm_0123456789ab_" + "x" * 43])
def test_authorization_that_is_not_a_token_is_unauthenticated(server: ServerProcess,
                                                              header: str) -> None:
    with grpc.insecure_channel(server.target) as channel, pytest.raises(grpc.RpcError) as no:
        pb_grpc.ReferenceServiceStub(channel).ListReferences(
            pb.ListReferencesRequest(), metadata=[("authorization", header)], timeout=30)
    assert no.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "Bearer cm_" in no.value.details()


def test_health_and_reflection_need_no_token(server: ServerProcess) -> None:
    with ClipmatchClient(server.target, token=None) as anyone:
        assert anyone.health() == "SERVING"
        assert anyone.health("clipmatch.v1.AdminService") == "SERVING"


def test_a_tenant_cannot_see_touch_or_match_another_tenants_references(
        server: ServerProcess, tokens: dict[str, str], owned: dict[str, dict[str, Any]],
        tmp_path: Path) -> None:
    battle = owned["a_battle"]["reference_id"]
    with server.client(tokens["rights_holder_b"]) as b:
        for call in (lambda: b.get(battle), lambda: b.delete(battle)):
            assert assert_status(call, "NOT_FOUND") == f"no reference with id {battle!r}"
        listed = b.list()
        assert [r["reference_id"] for r in listed["references"]] == [
            owned["b_knolls"]["reference_id"]]
        assert listed["total_count"] == 1
    with server.client(tokens["rights_holder_a"]) as a:
        assert a.get(battle)["tenant"] == "a"

    clip = Clip("battle", 10.0, 6.0).write(tmp_path)
    frames = _frames(clip)
    with server.client(tokens["crawler_b"]) as crawler_b:
        assert crawler_b.match(clip)["matches"] == []
        assert crawler_b.match_fingerprint(frames)["matches"] == []
    with server.client(tokens["crawler_a"]) as crawler_a:
        assert [m["reference_id"] for m in crawler_a.match(clip)["matches"]] == [battle]
        assert [m["reference_id"] for m in crawler_a.match_fingerprint(frames)["matches"]] == [
            battle]


def test_the_same_file_belongs_to_each_tenant_that_registers_it(
        server: ServerProcess, tokens: dict[str, str], owned: dict[str, dict[str, Any]],
        tmp_path: Path) -> None:
    a, b = owned["a_knolls"], owned["b_knolls"]
    assert a["content_sha256"] == b["content_sha256"]
    assert (a["tenant"], b["tenant"]) == ("a", "b") and a["reference_id"] != b["reference_id"]
    with server.client(tokens["rights_holder_b"]) as holder:
        message = assert_status(lambda: holder.register(fixture("knolls")), "ALREADY_EXISTS")
        assert b["reference_id"] in message and a["reference_id"] not in message
    clip = Clip("knolls", 12.0, 6.0).write(tmp_path)
    for tenant in ("a", "b"):
        with server.client(tokens[f"crawler_{tenant}"]) as crawler:
            assert [m["reference_id"] for m in crawler.match(clip)["matches"]] == [
                owned[f"{tenant}_knolls"]["reference_id"]]
    with server.client() as admin:  # an admin sees every tenant's
        listed = {r["reference_id"]: r["tenant"] for r in admin.list_all()}
        assert {listed[r["reference_id"]] for r in owned.values()} == {"a", "b"}


@pytest.mark.parametrize(("tenant", "role", "word"), [
    ("", CRAWLER, "tenant"), ("Acme", CRAWLER, "lower-case"), ("-a", CRAWLER, "starting"),
    ("a" * 64, CRAWLER, "63"), ("a b", CRAWLER, "tenant"), ("a", "superuser", "rights_holder"),
    ("a", "", "crawler")])
def test_bad_token_fields_are_invalid_argument(server: ServerProcess, tenant: str, role: str,
                                               word: str) -> None:
    with server.client() as admin:
        assert_status(lambda: admin.create_token(tenant, role), "INVALID_ARGUMENT", word)


def test_tokens_are_listed_without_secrets_and_the_last_admin_is_kept(
        server: ServerProcess, tokens: dict[str, str]) -> None:
    with server.client() as admin:
        listed = admin.list_tokens()
        assert {"token_id", "tenant", "role", "label", "created_at", "revoked_at"} == set(
            listed[0])
        assert not any(token and token in json.dumps(listed) for token in tokens.values())
        assert {t["role"] for t in admin.list_tokens("b")} == {RIGHTS_HOLDER, CRAWLER}
        own_id = server.admin_token.split("_")[1]
        assert_status(lambda: admin.revoke_token(own_id), "FAILED_PRECONDITION",
                      "last valid admin")
        assert_status(lambda: admin.revoke_token("0123456789ab"), "NOT_FOUND")


def test_admin_token_file_is_private_and_shown_on_the_first_start_only(
        server: ServerProcess) -> None:
    path = server.data_dir / ADMIN_TOKEN_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    shown = [line.strip() for line in server.printed if line.strip().startswith("cm_")]
    assert shown == [server.admin_token]
    created = server.events("admin_token_created")
    assert created and created[0]["path"] == str(path)
    assert server.admin_token not in json.dumps(server.logs)  # never in the logs


def test_no_auth_is_refused_off_loopback(tmp_path: Path) -> None:
    result = subprocess.run([*SERVER_COMMAND, "--data-dir", str(tmp_path / "data"), "--listen",
                             "0.0.0.0:0", "--no-auth"], cwd=REPO, capture_output=True,
                            text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert '"event": "cannot_listen"' in result.stderr
    assert "--no-auth" in result.stderr and "loopback" in result.stderr
    assert not (tmp_path / "data").exists()


def test_no_auth_on_loopback_serves_everyone_as_admin(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLIPMATCH_TOKEN", raising=False)
    server = ServerProcess(tmp_path / "data", (*SERVER_COMMAND, "--no-auth"))
    server.start()
    try:
        warning = server.events("auth_disabled")
        assert warning and warning[0]["level"] == "warning"
        with ClipmatchClient(server.target) as anyone:
            reference = anyone.register(fixture("knolls"))
            assert reference["tenant"] == DEFAULT_TENANT
            assert anyone.list_tokens() == []
            assert [e["token_id"] for e in anyone.audit_all()] == ["no-auth"]
        assert not (tmp_path / "data" / ADMIN_TOKEN_FILE).exists()
    finally:
        assert server.stop() == 0


def test_rate_limit_is_per_token(tmp_path: Path) -> None:
    """3 calls at once, then 1 a second: a burst of 6 from one token is cut off with the limit
    named, while another token's calls go through."""
    server = ServerProcess(tmp_path / "data", (*SERVER_COMMAND, "--rate-limit-rps", "1",
                                               "--rate-limit-burst", "3"))
    server.start()
    try:
        with server.client() as admin:
            busy, other = (admin.create_token("a", RIGHTS_HOLDER)["token"] for _ in range(2))
        with server.client(busy) as client:
            answers = []
            for _ in range(6):
                try:
                    answers.append(client.list()["total_count"])
                except ClipmatchError as error:
                    answers.append(error)
        assert answers[:3] == [0, 0, 0]
        refused = [a for a in answers if isinstance(a, ClipmatchError)]
        assert refused and all(e.code == "RESOURCE_EXHAUSTED" for e in refused)
        assert "1 requests/s" in refused[0].message and "--rate-limit-rps" in refused[0].message
        assert "retry after" in refused[0].message
        with server.client(other) as client:
            assert client.list()["total_count"] == 0
    finally:
        assert server.stop() == 0


def test_audit_records_registrations_matches_and_deletions_per_tenant(
        server: ServerProcess, tokens: dict[str, str], owned: dict[str, dict[str, Any]],
        tmp_path: Path) -> None:
    started = time.time()
    with server.client(tokens["rights_holder_b"]) as holder:
        piece = holder.register(Clip("loyalists", 15.0, 8.0).write(tmp_path))
        holder.match(Clip("loyalists", 16.0, 5.0).write(tmp_path))
        holder.delete(piece["reference_id"])
    holder_id = tokens["rights_holder_b"].split("_")[1]
    with server.client() as admin:
        rows = admin.audit_all(tenant="b", since=started)
        assert [(r["action"], r["token_id"], r["role"]) for r in rows] == [
            ("register", holder_id, RIGHTS_HOLDER), ("match", holder_id, RIGHTS_HOLDER),
            ("delete", holder_id, RIGHTS_HOLDER)]
        register, match, delete = rows
        assert register["reference_id"] == delete["reference_id"] == piece["reference_id"]
        assert register["detail"]["title"] == piece["title"]
        assert [m["reference_id"] for m in match["detail"]["matches"]] == [piece["reference_id"]]
        assert match["detail"]["query_duration_s"] == pytest.approx(5.0, abs=0.1)

        registered = admin.audit_all(tenant="a", action="register")
        assert {r["reference_id"] for r in registered} >= {owned["a_battle"]["reference_id"],
                                                          owned["a_knolls"]["reference_id"]}
        assert admin.audit_all(tenant="b", until=started) == [
            r for r in admin.audit_all(tenant="b") if r["at"] < started]
        created = admin.audit_all(action="token_create")
        assert {r["detail"]["role"] for r in created} >= {RIGHTS_HOLDER, CRAWLER}
        page = admin.audit(page_size=2)
        assert len(page["entries"]) == 2 and page["next_page_token"]
        assert_status(lambda: admin.audit(action="edit"), "INVALID_ARGUMENT", "register")


def test_tokens_and_audit_survive_a_restart(server: ServerProcess,
                                            tokens: dict[str, str]) -> None:
    """(Last in this module: it restarts the module's server.) The restart shows no token."""
    with server.client() as admin:
        before = admin.audit_all()
    printed = len(server.printed)
    server.restart()
    assert len(server.printed) == printed
    with server.client() as admin:
        assert admin.audit_all()[:len(before)] == before
    with server.client(tokens["crawler_a"]) as crawler:
        assert crawler.match_fingerprint(_frames(fixture("knolls")))["matches"]
    with server.client(tokens["revoked"]) as revoked:
        assert_status(revoked.list, "UNAUTHENTICATED")
