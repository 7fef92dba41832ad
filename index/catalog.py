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

import faiss
import numpy as np
from threadpoolctl import threadpool_limits

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
from index.vectors import DEFAULT_FACTORY, EXACT_FACTORY, VectorIndex, needs_training

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
    unrelated windows reach; only the excess counts as a vote. ``min_evidence``: votes a
    candidate alignment needs before it is verified. A verified candidate's score is a
    logistic of its mean aligned similarity, whose midpoint rises for short segments
    (less audio, more room for chance): ``midpoint + short_penalty / duration``.
    ``min_score``: below it a segment is not reported (the no-match operating point).
    """

    neighbours: int = 20
    similarity_floor: float = 0.5
    min_evidence: float = 0.5
    similarity_midpoint: float = 0.5
    similarity_scale: float = 0.04
    short_penalty: float = 0.75
    min_score: float = 0.5

    def __post_init__(self) -> None:
        if not 1 <= self.neighbours <= 1024:
            raise ValueError(f"neighbours must be in 1..1024, got {self.neighbours}")
        if not -1.0 <= self.similarity_floor < 1.0:
            raise ValueError(f"similarity_floor must be in [-1, 1), got {self.similarity_floor}")
        if self.similarity_scale <= 0:
            raise ValueError(f"similarity_scale must be > 0, got {self.similarity_scale}")
        if not 0.0 <= self.min_score <= 1.0:
            raise ValueError(f"min_score must be in [0, 1], got {self.min_score}")

    def score(self, similarity: float, duration_s: float) -> float:
        midpoint = self.similarity_midpoint + self.short_penalty / max(duration_s, 0.5)
        return float(1.0 / (1.0 + np.exp(-(similarity - midpoint) / self.similarity_scale)))


LONG_QUERY_S = 6.0
"""Clips longer than this search with half their windows (see ``_search_windows``)."""

VERIFY_SPAN_S = 6.0
"""A candidate is verified over at least this much of the query (window starts)."""

TRAIN_MIN_WINDOWS = 20_000
"""About 1.4 h of reference: below it the index is exact (and small anyway)."""
TRAIN_MAX_WINDOWS = 200_000
"""Training sample cap: quantiser quality stops improving long before this."""

FINGERPRINT_CACHE = 512
"""References whose stored descriptors stay in memory for verification."""

SAVE_INTERVAL_S = 30.0
"""The index file is rewritten at most this often while writes arrive (and on close);
after a crash it is rebuilt from the fingerprints, so nothing acknowledged is lost."""


class Catalog:
    """Register, list, delete and match references in one data directory. Thread-safe."""

    def __init__(self, data_dir: str | Path, index_factory: str = DEFAULT_FACTORY,
                 params: MatchParams | None = None) -> None:
        # One FAISS and one BLAS thread per call: concurrency comes from the callers' threads,
        # and pool threads spinning against them on a small, shared machine multiply
        # latency (measured: query descriptors 99 ms with OpenBLAS's 2 threads, 11 ms with 1).
        faiss.omp_set_num_threads(1)
        threadpool_limits(1)
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.params = params or MatchParams()
        self._store = Store(self.data_dir)
        self._refuse_other_formats()
        self._index_path = self.data_dir / "index" / "audio.faiss"
        self._index_path.parent.mkdir(exist_ok=True)
        self._write_lock = threading.Lock()
        self._factory = index_factory
        self._index = self._open_index()
        self._saved_at = time.monotonic()
        self._dirty = False
        self._cache: dict[int, Fingerprints] = {}
        self._cache_lock = threading.Lock()

    def _refuse_other_formats(self) -> None:
        """Fingerprints of another format cannot be compared with this version's queries, and
        the media they came from is not kept: say so instead of matching wrongly."""
        other = {f: n for f, n in self._store.formats().items() if f != FORMAT}
        if other:
            self._store.close()
            held = ", ".join(f"{n} in {f!r}" for f, n in sorted(other.items()))
            raise ValueError(
                f"{self.data_dir} holds references fingerprinted in another format ({held}); "
                f"this version computes {FORMAT!r} and cannot compare the two. Register the "
                "media again into a new data directory.")

    # -- index persistence -------------------------------------------------------------

    def _index_state(self, index: VectorIndex) -> dict:
        numbers = sorted(self._store.numbers())
        digest = hashlib.sha256(np.asarray(numbers, dtype=np.int64).tobytes()).hexdigest()
        return {"target": self._factory, "factory": index.factory, "trained_on": index.trained_on,
                "format": FORMAT, "dim": DIM, "references": digest}

    def _open_index(self) -> VectorIndex:
        state_path = self._index_path.with_suffix(".json")
        if self._index_path.exists() and state_path.exists():
            try:
                state = json.loads(state_path.read_text())
                index = VectorIndex.load(self._index_path, DIM, state["factory"],
                                         state["trained_on"])
                if state == self._index_state(index):
                    return index
                log.info("index file is stale; rebuilding from fingerprints")
            except (ValueError, KeyError, RuntimeError, OSError) as exc:
                log.warning("index file unreadable (%s); rebuilding from fingerprints", exc)
        return self._rebuild()

    def _rebuild(self) -> VectorIndex:
        """Build the index from the stored fingerprints, training the quantiser on them once
        there are enough (exact search until then)."""
        stored = [(number, self._store.fingerprints(reference_id))
                  for number, reference_id in sorted(self._store.numbers().items())]
        total = sum(len(f.vectors) for _, f in stored)
        factory, training = EXACT_FACTORY, None
        if not needs_training(self._factory, DIM):
            factory = self._factory
        elif total >= TRAIN_MIN_WINDOWS:
            factory = self._factory
            everything = np.concatenate([f.vectors for _, f in stored])
            training = everything[:: max(1, total // TRAIN_MAX_WINDOWS)]
        index = VectorIndex(DIM, factory, training=training, trained_on=total)
        for number, fingerprints in stored:
            index.add(number, fingerprints.vectors, _slots(fingerprints.times))
        self._save(index)
        log.info("index built: %s over %d windows", factory, total)
        return index

    def _retrain_if_grown(self) -> None:
        """Retrain once the catalogue is big enough, and again whenever it has quadrupled,
        so the quantiser always fits the catalogue it serves. Called under the write lock."""
        if not needs_training(self._factory, DIM):
            return
        untrained = self._index.factory != self._factory
        if ((untrained and self._index.ntotal >= TRAIN_MIN_WINDOWS)
                or (not untrained and self._index.ntotal >= 4 * self._index.trained_on)):
            self._index = self._rebuild()
            self._dirty = False
            self._saved_at = time.monotonic()

    def _save(self, index: VectorIndex) -> None:
        index.save(self._index_path)
        self._index_path.with_suffix(".json").write_text(json.dumps(self._index_state(index)))

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
            self._retrain_if_grown()
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
        vectors, times, transform = descriptors(frames, QUERY_HOP_S, QUERY_GRID)
        if len(vectors) == 0 or self._index.ntotal == 0:
            return []
        search = _search_windows(times, frames.duration_s)
        candidates = align.segments(
            self._hits(vectors[search], times[search], transform[search]), WINDOW_S,
            self.params.similarity_floor, self.params.min_evidence)
        references = self._store.by_numbers(sorted({s.reference for s in candidates}))
        matches = []
        for segment in candidates:
            reference = references.get(segment.reference)
            if reference is None:  # deleted while this query ran
                continue
            fingerprints = self._fingerprints(segment.reference, reference.reference_id)
            mine = transform == segment.transform
            similarity = align.verify(segment, vectors[mine], times[mine], fingerprints.vectors,
                                      _slots(fingerprints.times), REFERENCE_HOP_S,
                                      VERIFY_SPAN_S)
            score = self.params.score(similarity, segment.query_end_s - segment.query_start_s)
            if score < self.params.min_score:
                continue
            matches.append(Match(
                reference_id=reference.reference_id, title=reference.title,
                external_id=reference.external_id, modality="audio", score=score,
                query_start_s=segment.query_start_s,
                query_end_s=min(segment.query_end_s, frames.duration_s),
                reference_start_s=max(segment.reference_start_s, 0.0),
                reference_end_s=min(segment.reference_end_s, reference.duration_s),
                speed=segment.speed))
        return matches

    def _fingerprints(self, number: int, reference_id: str) -> Fingerprints:
        """Stored descriptors of a reference, cached: verification reads them per query."""
        with self._cache_lock:
            cached = self._cache.pop(number, None)
            if cached is None:
                cached = self._store.fingerprints(reference_id)
            self._cache[number] = cached  # most recently used last
            while len(self._cache) > FINGERPRINT_CACHE:
                self._cache.pop(next(iter(self._cache)))
        return cached

    def _hits(self, vectors: np.ndarray, times: np.ndarray, transform: np.ndarray) -> align.Hits:
        """One FAISS search for the windows of every query transform."""
        k = self.params.neighbours
        sims, numbers, slots = self._index.search(vectors, k)
        time_scale = np.array([t.time_scale for t in QUERY_GRID], np.float32)[transform]
        valid = (numbers >= 0).reshape(-1)
        return align.Hits(
            query_time=np.repeat(times, k)[valid],
            reference=numbers.reshape(-1)[valid],
            reference_time=(slots.reshape(-1)[valid] * REFERENCE_HOP_S).astype(np.float32),
            similarity=sims.reshape(-1)[valid],
            time_scale=np.repeat(time_scale, k)[valid],
            transform=np.repeat(transform, k)[valid])


def _search_windows(times: np.ndarray, duration_s: float) -> np.ndarray:
    """Which query windows go to FAISS: all of a short clip, every other one of a long clip
    (it has votes to spare, and search time is proportional). Verification uses all."""
    if duration_s <= LONG_QUERY_S:
        return np.ones(len(times), dtype=bool)
    return np.round(times / QUERY_HOP_S).astype(np.int64) % 2 == 0


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
