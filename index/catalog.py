"""The library the service wraps: register references, identify clips.

``Catalog(data_dir)`` owns one data directory: ``catalog.sqlite`` (metadata),
``fingerprints/*.npz`` (each reference's descriptors, the source of truth) and
``index/audio.faiss`` (the FAISS index, derived: rebuilt from the fingerprints whenever it
is missing, stale or damaged).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fingerprint.audio import (
    DIM,
    FORMAT,
    QUERY_GRID,
    QUERY_HOP_S,
    REFERENCE_HOP_S,
    WINDOW_S,
    BandFrames,
    band_frames,
    descriptors,
)
from fingerprint.decode import SAMPLE_RATE, MediaError, MediaSource, decode_audio
from index import align
from index.store import DuplicateError, Fingerprints, NotFoundError, Reference, Store
from index.vectors import DEFAULT_FACTORY, VectorIndex

__all__ = ["Catalog", "DuplicateError", "Match", "MatchParams", "MediaError", "NotFoundError",
           "Reference"]

log = logging.getLogger("clipmatch.catalog")


@dataclass(frozen=True)
class Match:
    """One matched segment, as the API reports it."""

    reference_id: str
    title: str
    external_id: str
    modality: str
    score: float
    query_start_s: float
    query_end_s: float
    reference_start_s: float
    reference_end_s: float
    speed: float


@dataclass(frozen=True)
class MatchParams:
    """Search and decision settings.

    ``neighbours``: FAISS hits per query window. ``similarity_floor``: inner product that
    unrelated windows reach; only the excess counts as evidence. ``evidence_midpoint`` and
    ``evidence_scale``: the logistic that turns a segment's evidence into a score in [0, 1].
    ``min_score``: below it a segment is not reported (the no-match operating point).
    """

    neighbours: int = 20
    similarity_floor: float = 0.5
    evidence_midpoint: float = 12.0
    evidence_scale: float = 2.0
    min_score: float = 0.5

    def __post_init__(self) -> None:
        if not 1 <= self.neighbours <= 1024:
            raise ValueError(f"neighbours must be in 1..1024, got {self.neighbours}")
        if not -1.0 <= self.similarity_floor < 1.0:
            raise ValueError(f"similarity_floor must be in [-1, 1), got {self.similarity_floor}")
        if self.evidence_scale <= 0:
            raise ValueError(f"evidence_scale must be > 0, got {self.evidence_scale}")
        if not 0.0 <= self.min_score <= 1.0:
            raise ValueError(f"min_score must be in [0, 1], got {self.min_score}")

    def score(self, evidence: float) -> float:
        return float(1.0 / (1.0 + np.exp(-(evidence - self.evidence_midpoint)
                                          / self.evidence_scale)))

    @property
    def min_evidence(self) -> float:
        """Evidence at which ``score`` reaches ``min_score``."""
        p = min(max(self.min_score, 1e-9), 1 - 1e-9)
        return self.evidence_midpoint + self.evidence_scale * float(np.log(p / (1 - p)))


SAVE_INTERVAL_S = 30.0
"""The index file is rewritten at most this often while writes arrive (and on close);
after a crash it is rebuilt from the fingerprints, so nothing acknowledged is lost."""


class Catalog:
    """Register, list, delete and match references in one data directory. Thread-safe."""

    def __init__(self, data_dir: str | Path, index_factory: str = DEFAULT_FACTORY,
                 params: MatchParams | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.params = params or MatchParams()
        self._store = Store(self.data_dir)
        self._index_path = self.data_dir / "index" / "audio.faiss"
        self._index_path.parent.mkdir(exist_ok=True)
        self._write_lock = threading.Lock()
        self._index = self._open_index(index_factory)
        self._saved_at = time.monotonic()
        self._dirty = False

    # -- index persistence -------------------------------------------------------------

    def _index_state(self, factory: str) -> dict:
        numbers = sorted(self._store.numbers())
        digest = hashlib.sha256(np.asarray(numbers, dtype=np.int64).tobytes()).hexdigest()
        return {"factory": factory, "format": FORMAT, "dim": DIM, "references": digest}

    def _open_index(self, factory: str) -> VectorIndex:
        state_path = self._index_path.with_suffix(".json")
        state = self._index_state(factory)
        if self._index_path.exists() and state_path.exists():
            try:
                if json.loads(state_path.read_text()) == state:
                    return VectorIndex.load(self._index_path, DIM, factory)
                log.info("index file is stale; rebuilding from fingerprints")
            except (ValueError, RuntimeError, OSError) as exc:
                log.warning("index file unreadable (%s); rebuilding from fingerprints", exc)
        return self._rebuild(factory)

    def _rebuild(self, factory: str) -> VectorIndex:
        index = VectorIndex(DIM, factory)
        for number, reference_id in sorted(self._store.numbers().items()):
            fingerprints = self._store.fingerprints(reference_id)
            index.add(number, fingerprints.vectors, _slots(fingerprints.times))
        self._save(index)
        return index

    def _save(self, index: VectorIndex) -> None:
        index.save(self._index_path)
        self._index_path.with_suffix(".json").write_text(
            json.dumps(self._index_state(index.factory)))

    def _changed(self) -> None:
        """Note a write; persist the index if the last save is old enough."""
        self._dirty = True
        if time.monotonic() - self._saved_at >= SAVE_INTERVAL_S:
            self.flush()

    def flush(self) -> None:
        """Write the index file now (it is derived data: this only speeds up restarts)."""
        with self._write_lock:
            if self._dirty:
                self._save(self._index)
                self._dirty = False
            self._saved_at = time.monotonic()

    def close(self) -> None:
        self.flush()
        self._store.close()

    # -- references --------------------------------------------------------------------

    def register(self, media: MediaSource, *, title: str, external_id: str = "",
                 metadata: dict[str, str] | None = None) -> Reference:
        """Fingerprint ``media`` (a path or bytes) and add it to the catalogue."""
        if not title.strip():
            raise ValueError("title must not be empty")
        content_sha256 = _sha256(media)
        existing = self._store.find_sha256(content_sha256)
        if existing:
            raise DuplicateError(existing)
        samples = decode_audio(media)
        vectors, times, _ = descriptors(band_frames(samples), REFERENCE_HOP_S)
        if len(vectors) == 0:
            raise MediaError("the audio is silent or shorter than 1.5 s: there is nothing to "
                             "fingerprint, so it could never be matched")
        with self._write_lock:
            number, reference = self._store.add(
                title=title, external_id=external_id, metadata=metadata or {},
                duration_s=samples.size / SAMPLE_RATE, content_sha256=content_sha256,
                fingerprint_format=FORMAT, fingerprints=Fingerprints(vectors, times))
            self._index.add(number, vectors, _slots(times))
        self._changed()
        log.info("registered %s %r (%.1f s, %d windows)", reference.reference_id, title,
                 reference.duration_s, len(vectors))
        return reference

    def get(self, reference_id: str) -> Reference:
        return self._store.get(reference_id)[1]

    def list(self, page_size: int = 100, page_token: str = "") -> tuple[list[Reference], str, int]:
        """A page of references in registration order, the next page's token ("" at the end)
        and the total count."""
        if not 1 <= page_size <= 1000:
            raise ValueError(f"page_size must be in 1..1000, got {page_size}")
        after = 0
        if page_token:
            if not page_token.isdigit():
                raise ValueError(f"page_token {page_token!r} is not one this server issued")
            after = int(page_token)
        rows = self._store.page(after, page_size + 1)
        more = len(rows) > page_size
        rows = rows[:page_size]
        next_token = str(rows[-1][0]) if more and rows else ""
        return [reference for _, reference in rows], next_token, self._store.count()

    def delete(self, reference_id: str) -> None:
        with self._write_lock:
            number = self._store.delete(reference_id)
            self._index.remove(number)
        self._changed()
        log.info("deleted %s", reference_id)

    # -- matching ----------------------------------------------------------------------

    def match_media(self, media: MediaSource) -> list[Match]:
        """Identify a clip (path or bytes). Silence or no evidence gives []."""
        return self.match_frames(band_frames(decode_audio(media)))

    def match_frames(self, frames: BandFrames) -> list[Match]:
        """Identify a clip from its band frames (what a crawler computes and sends)."""
        hits = self._hits(frames)
        if hits is None:
            return []
        found = align.segments(hits, WINDOW_S, self.params.similarity_floor,
                               self.params.min_evidence)
        references = self._store.by_numbers(sorted({s.reference for s in found}))
        matches = []
        for segment in found:
            reference = references.get(segment.reference)
            if reference is None:  # deleted while this query ran
                continue
            matches.append(Match(
                reference_id=reference.reference_id, title=reference.title,
                external_id=reference.external_id, modality="audio",
                score=self.params.score(segment.evidence),
                query_start_s=segment.query_start_s,
                query_end_s=min(segment.query_end_s, frames.duration_s),
                reference_start_s=max(segment.reference_start_s, 0.0),
                reference_end_s=min(segment.reference_end_s, reference.duration_s),
                speed=segment.speed))
        return matches

    def _hits(self, frames: BandFrames) -> align.Hits | None:
        """One FAISS search for the windows of every query transform."""
        vectors, query_time, transform = descriptors(frames, QUERY_HOP_S, QUERY_GRID)
        if len(vectors) == 0 or self._index.ntotal == 0:
            return None
        k = self.params.neighbours
        sims, numbers, slots = self._index.search(vectors, k)
        time_scale = np.array([t.time_scale for t in QUERY_GRID], np.float32)[transform]
        valid = (numbers >= 0).reshape(-1)
        return align.Hits(
            query_time=np.repeat(query_time, k)[valid],
            reference=numbers.reshape(-1)[valid],
            reference_time=(slots.reshape(-1)[valid] * REFERENCE_HOP_S).astype(np.float32),
            similarity=sims.reshape(-1)[valid],
            time_scale=np.repeat(time_scale, k)[valid],
            transform=np.repeat(transform, k)[valid])


def _slots(times: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(times) / REFERENCE_HOP_S).astype(np.int64)


def _sha256(media: MediaSource) -> str:
    digest = hashlib.sha256()
    if isinstance(media, bytes):
        digest.update(media)
    else:
        try:
            with open(media, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        except OSError as exc:
            raise MediaError(f"cannot read {media}: {exc.strerror}") from exc
    return digest.hexdigest()
