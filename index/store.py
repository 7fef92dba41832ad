"""Reference metadata in SQLite, and each reference's fingerprints as a file beside it.

The fingerprint files are the source of truth for search; the FAISS index is derived
from them and can always be rebuilt (see ``index.vectors``).
"""

from __future__ import annotations

import functools
import json
import mmap
import os
import sqlite3
import struct
import threading
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fingerprint import audio

LAYOUT_CACHE = 65_536
"""Fingerprint files whose array layout is remembered (a few hundred bytes each): reading a
window then costs a memory map, not a parse of the file's zip directory and headers."""

WHOLE_FILE_BYTES = 1 << 20
"""A fingerprint file up to this size (an hour of audio is 4 MB) is asked of the disk whole
when its layout is first read: one sequential read costs less than the several small ones
the zip directory, the array headers and a window would take apart."""

DEFAULT_TENANT = "default"
"""The tenant of references registered without one, and of those a data directory held before
references had owners."""

SCHEMA_VERSION = 1
"""``PRAGMA user_version`` of the catalogue: 0 before references had a tenant (the same bytes
could then be registered once in all), 1 since."""

REFERENCE_TABLE = """
CREATE TABLE {name} (
    number INTEGER PRIMARY KEY AUTOINCREMENT,
    reference_id TEXT NOT NULL UNIQUE,
    title TEXT NOT NULL,
    external_id TEXT NOT NULL DEFAULT '',
    metadata TEXT NOT NULL DEFAULT '{{}}',
    duration_s REAL NOT NULL,
    modalities TEXT NOT NULL,
    created_at REAL NOT NULL,
    content_sha256 TEXT NOT NULL,
    fingerprint_format TEXT NOT NULL,
    tenant TEXT NOT NULL,
    UNIQUE (tenant, content_sha256)
);
"""

TENANT_INDEX = "CREATE INDEX reference_tenant ON reference (tenant, number);"

CREATE = f"""
BEGIN IMMEDIATE;
{REFERENCE_TABLE.format(name="reference")}
{TENANT_INDEX}
PRAGMA user_version = {SCHEMA_VERSION};
COMMIT;
"""

MIGRATE_0_TO_1 = f"""
BEGIN IMMEDIATE;
{REFERENCE_TABLE.format(name="reference_v1")}
INSERT INTO reference_v1 (number, reference_id, title, external_id, metadata, duration_s,
                          modalities, created_at, content_sha256, fingerprint_format, tenant)
    SELECT number, reference_id, title, external_id, metadata, duration_s, modalities,
           created_at, content_sha256, fingerprint_format, '{DEFAULT_TENANT}' FROM reference;
DELETE FROM sqlite_sequence WHERE name = 'reference_v1';
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'reference_v1', seq FROM sqlite_sequence WHERE name = 'reference';
DROP TABLE reference;
ALTER TABLE reference_v1 RENAME TO reference;
{TENANT_INDEX}
PRAGMA user_version = 1;
COMMIT;
"""
"""References of a version-0 catalogue go to the default tenant. The table is rebuilt (SQLite
cannot drop the old UNIQUE on content_sha256 in place) and keeps its AUTOINCREMENT counter:
a number once used may still be a tombstone in a sealed index segment, so it is never given
out again."""


@dataclass(frozen=True)
class Reference:
    """A registered reference as the API reports it."""

    reference_id: str
    title: str
    duration_s: float
    content_sha256: str
    external_id: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    modalities: tuple[str, ...] = ()
    created_at: float = 0.0
    tenant: str = DEFAULT_TENANT


@dataclass(frozen=True)
class Fingerprints:
    """One reference's descriptors of one modality and their start times (s), and for audio
    its spectral peaks (``fingerprint.audio.peaks`` codes), which verification checks."""

    vectors: np.ndarray
    times: np.ndarray
    peaks: np.ndarray | None = None


class NotFoundError(KeyError):
    """No reference with that id."""

    def __str__(self) -> str:  # KeyError quotes its message; a person wants plain text
        return str(self.args[0]) if self.args else "not found"


class DuplicateError(ValueError):
    """The same bytes are already registered."""

    def __init__(self, reference_id: str) -> None:
        super().__init__(f"these bytes are already registered as reference {reference_id}")
        self.reference_id = reference_id


class Store:
    """SQLite rows plus ``fingerprints/<reference_id>.npz`` files under one directory.

    A reference is written as: fingerprint file (fsynced, renamed into place) first, then
    the row in one transaction. A crash between the two leaves an orphan file that
    ``Store.open`` removes, never a row without fingerprints.
    """

    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir
        self.fingerprint_dir = data_dir / "fingerprints"
        self.fingerprint_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(data_dir / "catalog.sqlite", check_same_thread=False,
                                   isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._open_schema()
        self._remove_orphans()

    def _open_schema(self) -> None:
        """Create the table, or bring one an earlier version wrote up to SCHEMA_VERSION."""
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        exists = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'reference'").fetchone()
        if version > SCHEMA_VERSION:
            self._db.close()
            raise ValueError(f"{self.root} was written by a newer clipmatch (catalogue schema "
                             f"{version}, this version reads up to {SCHEMA_VERSION})")
        if exists and version == SCHEMA_VERSION:
            return
        self._db.executescript(MIGRATE_0_TO_1 if exists else CREATE)  # one transaction

    def _remove_orphans(self) -> None:
        known = {row[0] for row in self._db.execute("SELECT reference_id FROM reference")}
        for path in self.fingerprint_dir.glob("*.npz"):
            if path.stem not in known:
                path.unlink()
        for path in self.fingerprint_dir.glob("*.tmp*"):
            path.unlink()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, *, title: str, external_id: str, metadata: dict[str, str],
            duration_s: float, content_sha256: str, fingerprint_format: str,
            fingerprints: dict[str, Fingerprints], tenant: str = DEFAULT_TENANT
            ) -> tuple[int, Reference]:
        """Persist a new reference of ``tenant`` durably; returns its internal number and
        record. ``fingerprints`` maps each modality the media has ("audio", "video") to its
        descriptors."""
        reference = Reference(
            reference_id=uuid.uuid4().hex[:16], title=title, external_id=external_id,
            metadata=dict(metadata), duration_s=duration_s, created_at=time.time(),
            content_sha256=content_sha256, modalities=tuple(fingerprints), tenant=tenant)
        path = self.fingerprint_dir / f"{reference.reference_id}.npz"
        tmp = path.with_suffix(".tmp.npz")
        arrays = {}
        for modality, fp in fingerprints.items():
            arrays[f"{modality}_vectors"] = fp.vectors.astype(np.float16)
            arrays[f"{modality}_times"] = fp.times.astype(np.float32)
            if fp.peaks is not None:
                arrays[f"{modality}_peaks"] = fp.peaks.astype(np.uint32)
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
        with self._lock:
            existing = self._find_sha256(content_sha256, tenant)
            if existing:
                path.unlink()
                raise DuplicateError(existing)
            cursor = self._db.execute(
                "INSERT INTO reference (reference_id, title, external_id, metadata, duration_s,"
                " modalities, created_at, content_sha256, fingerprint_format, tenant)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (reference.reference_id, title, external_id, json.dumps(metadata), duration_s,
                 ",".join(reference.modalities), reference.created_at, content_sha256,
                 fingerprint_format, tenant))
            return int(cursor.lastrowid), reference

    def find_sha256(self, content_sha256: str, tenant: str) -> str | None:
        """The id of ``tenant``'s reference of these bytes, if it has one."""
        with self._lock:
            return self._find_sha256(content_sha256, tenant)

    def _find_sha256(self, content_sha256: str, tenant: str) -> str | None:
        row = self._db.execute(
            "SELECT reference_id FROM reference WHERE tenant = ? AND content_sha256 = ?",
            (tenant, content_sha256)).fetchone()
        return row[0] if row else None

    def delete(self, reference_id: str, tenant: str | None = None) -> tuple[int, Reference]:
        """Remove the row (durably), then the file; returns the internal number and the
        record. A reference of another tenant than ``tenant`` (None: any) is not found."""
        with self._lock:
            number, reference = self._get(reference_id, tenant)
            self._db.execute("DELETE FROM reference WHERE number = ?", (number,))
        (self.fingerprint_dir / f"{reference_id}.npz").unlink(missing_ok=True)
        return number, reference

    def get(self, reference_id: str, tenant: str | None = None) -> tuple[int, Reference]:
        """The reference's number and record; NotFoundError, as for an unknown id, when it
        belongs to another tenant than ``tenant`` (None: any)."""
        with self._lock:
            return self._get(reference_id, tenant)

    def _get(self, reference_id: str, tenant: str | None) -> tuple[int, Reference]:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM reference WHERE reference_id = ?",
                               (reference_id,)).fetchone()
        if row is None or (tenant is not None and row[9] != tenant):
            raise NotFoundError(f"no reference with id {reference_id!r}")
        return int(row[0]), _reference(row)

    def by_numbers(self, numbers: list[int]) -> dict[int, Reference]:
        if not numbers:
            return {}
        marks = ",".join("?" * len(numbers))
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM reference WHERE number IN ({marks})", numbers).fetchall()
        return {int(row[0]): _reference(row) for row in rows}

    def page(self, after_number: int, limit: int, tenant: str | None = None
             ) -> list[tuple[int, Reference]]:
        """References (of ``tenant``, None: every tenant's) in registration order, those
        numbered above ``after_number``."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM reference WHERE number > :after"
                " AND (:tenant IS NULL OR tenant = :tenant) ORDER BY number LIMIT :limit",
                {"after": after_number, "tenant": tenant, "limit": limit}).fetchall()
        return [(int(row[0]), _reference(row)) for row in rows]

    def count(self, tenant: str | None = None) -> int:
        """How many references ``tenant`` (None: every tenant) holds."""
        with self._lock:
            return int(self._db.execute(
                "SELECT COUNT(*) FROM reference WHERE :tenant IS NULL OR tenant = :tenant",
                {"tenant": tenant}).fetchone()[0])

    def tenants(self) -> dict[int, str]:
        """Internal number -> tenant of every stored reference."""
        with self._lock:
            return dict(self._db.execute("SELECT number, tenant FROM reference").fetchall())

    def formats(self) -> dict[str, int]:
        """How many references each fingerprint format holds."""
        with self._lock:
            rows = self._db.execute(
                "SELECT fingerprint_format, COUNT(*) FROM reference GROUP BY fingerprint_format")
            return dict(rows.fetchall())

    def numbers(self, modality: str = "") -> dict[int, str]:
        """Internal number -> reference id of every stored reference (with a ``modality``
        track, if given)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT number, reference_id FROM reference"
                " WHERE ? = '' OR instr(',' || modalities || ',', ',' || ? || ',') > 0",
                (modality, modality)).fetchall()
        return {int(n): rid for n, rid in rows}

    def fingerprints(self, reference_id: str, modality: str,
                     between_s: tuple[float, float] = (-np.inf, np.inf)) -> Fingerprints:
        """The reference's descriptors of ``modality`` that start within ``between_s`` (and
        its peaks there); none if its media has no such track.

        The file's arrays are stored uncompressed, so they are mapped rather than loaded and
        only the pages of the span are read: verification looks at seconds of references
        that are often hours long and, in a large catalogue, rarely in memory.
        """
        path = self.fingerprint_dir / f"{reference_id}.npz"
        layout = _npz_layout(path)
        if f"{modality}_vectors" not in layout:
            return Fingerprints(np.zeros((0, 0), np.float32), np.zeros(0, np.float32))
        first, last = between_s
        with open(path, "rb") as handle:
            mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        times = layout[f"{modality}_times"].of(mapped)
        lo, hi = np.searchsorted(times, first, "left"), np.searchsorted(times, last, "right")
        peaks = None
        if f"{modality}_peaks" in layout:
            peaks = layout[f"{modality}_peaks"].of(mapped)
            peaks = np.array(peaks[audio.peaks_slice(peaks, first * audio.FRAME_RATE_HZ,
                                                     last * audio.FRAME_RATE_HZ)])
        vectors = layout[f"{modality}_vectors"].of(mapped)
        return Fingerprints(vectors[lo:hi].astype(np.float32), np.array(times[lo:hi]), peaks)


@dataclass(frozen=True)
class _Member:
    """Where one array of an ``np.savez`` file lies in it."""

    offset: int
    dtype: np.dtype
    shape: tuple[int, ...]

    def of(self, mapped: mmap.mmap) -> np.ndarray:
        """The array, read in place from the file's memory map (the map stays open while
        the array lives): slicing it reads only the slice's pages."""
        return np.frombuffer(mapped, self.dtype, int(np.prod(self.shape)),
                             self.offset).reshape(self.shape)


@functools.lru_cache(maxsize=LAYOUT_CACHE)
def _npz_layout(path: Path) -> dict[str, _Member]:
    """The arrays of an ``np.savez`` file and where each lies: savez stores its members
    uncompressed, each a .npy file at an offset the zip directory gives. A fingerprint file
    is written once and never changed, so its layout can be kept."""
    layout = {}
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size <= WHOLE_FILE_BYTES:
            os.posix_fadvise(handle.fileno(), 0, size, os.POSIX_FADV_WILLNEED)
        for member in zipfile.ZipFile(handle).infolist():
            if member.compress_type != zipfile.ZIP_STORED:
                raise ValueError(f"{path}: {member.filename} is compressed; fingerprint "
                                 "files are written uncompressed by this store")
            handle.seek(member.header_offset)
            local = handle.read(30)  # the local header; its name and extra field follow
            name_length, extra_length = struct.unpack("<HH", local[26:30])
            handle.seek(member.header_offset + 30 + name_length + extra_length)
            version = np.lib.format.read_magic(handle)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran_order, dtype = read_header(handle)
            if fortran_order:
                raise ValueError(f"{path}: {member.filename} is in Fortran order")
            layout[member.filename.removesuffix(".npy")] = _Member(handle.tell(), dtype, shape)
    return layout


_COLUMNS = ("number, reference_id, title, external_id, metadata, duration_s, modalities,"
            " created_at, content_sha256, tenant")


def _reference(row: tuple) -> Reference:
    return Reference(reference_id=row[1], title=row[2], external_id=row[3],
                     metadata=json.loads(row[4]), duration_s=float(row[5]),
                     modalities=tuple(row[6].split(",")), created_at=float(row[7]),
                     content_sha256=row[8], tenant=row[9])

