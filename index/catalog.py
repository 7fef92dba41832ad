"""The library the service wraps: register references, identify clips.

``Catalog(data_dir)`` owns one data directory: ``catalog.sqlite`` (metadata),
``fingerprints/*.npz`` (each reference's audio and video descriptors, the source of truth)
and ``index/audio/``, ``index/video/`` (each modality's segmented FAISS index, derived:
rebuilt from the fingerprints whenever it is missing, damaged or built for other settings).

Each modality is searched and aligned on its own; audio and video segments that agree on
the reference and the offset are fused into one ``audio+video`` match.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import threading
import zipfile
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from threadpoolctl import threadpool_limits

from fingerprint import audio, video
from fingerprint.audio import BandFrames
from fingerprint.decode import (
    MAX_DURATION_S,
    VIDEO_FRAME_RATE,
    MediaError,
    MediaSource,
    decode_media,
    set_decoder_threads,
)
from fingerprint.video import VideoFrames
from index import align, landmarks
from index.segments import Layout, Peaks, SegmentedIndex
from index.store import (
    DEFAULT_TENANT,
    DuplicateError,
    Fingerprints,
    NotFoundError,
    Reference,
    Store,
)

__all__ = ["DEFAULT_TENANT", "Catalog", "DuplicateError", "Match", "MatchParams", "MediaError",
           "NotFoundError", "Query", "Reference", "fingerprint_media", "fingerprint_reference"]

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
    candidate alignment needs before it is verified; ``max_candidates`` are verified at
    most. A verified candidate's score is a logistic of its margin (``margin``): how far its
    mean aligned similarity clears a midpoint that rises for short segments (less audio,
    more room for chance), ``midpoint + short_penalty / duration``, in units of
    ``similarity_scale``. With ``peak_midpoint`` set, the spectral-peak z-score of the
    alignment (``align.peak_evidence``) is the main evidence: the margin is then
    ``z - peak_midpoint`` plus the similarity margin at ``dense_weight``.
    ``min_score``: below it a segment is not reported (the no-match operating point).
    """

    neighbours: int = 20
    similarity_floor: float = 0.5
    min_evidence: float = 0.5
    max_candidates: int = 8
    similarity_midpoint: float = 0.5
    similarity_scale: float = 0.04
    short_penalty: float = 0.75
    peak_midpoint: float | None = None
    dense_weight: float = 1.0
    min_score: float = 0.5

    def __post_init__(self) -> None:
        if not 1 <= self.neighbours <= 1024:
            raise ValueError(f"neighbours must be in 1..1024, got {self.neighbours}")
        if not -1.0 <= self.similarity_floor < 1.0:
            raise ValueError(f"similarity_floor must be in [-1, 1), got {self.similarity_floor}")
        if self.similarity_scale <= 0:
            raise ValueError(f"similarity_scale must be > 0, got {self.similarity_scale}")
        if self.max_candidates < 1:
            raise ValueError(f"max_candidates must be >= 1, got {self.max_candidates}")
        if not 0.0 <= self.min_score <= 1.0:
            raise ValueError(f"min_score must be in [0, 1], got {self.min_score}")

    def margin(self, similarity: float, duration_s: float, peak_z: float = 0.0) -> float:
        """The score before the logistic (which ranks candidates where the score has
        saturated): how far the evidence of a segment this long clears the midpoint."""
        dense = (similarity - self.similarity_midpoint
                 - self.short_penalty / max(duration_s, 0.5)) / self.similarity_scale
        if self.peak_midpoint is None:
            return dense
        return self.dense_weight * dense + peak_z - self.peak_midpoint

    @staticmethod
    def score(margin: float) -> float:
        return float(1.0 / (1.0 + np.exp(-margin)))


@dataclass(frozen=True)
class Modality:
    """How one kind of fingerprint is indexed, aligned and scored."""

    name: str
    format: str
    dim: int
    hop_s: float
    """spacing of reference descriptors: the time unit of their FAISS ids"""
    window_s: float
    """media one descriptor covers (a segment ends one window after its last start)"""
    layout: Layout
    """how its descriptors are indexed: FAISS factory and search parameters, segment sizes"""
    params: MatchParams
    refine_speeds: tuple[float, ...] = ()
    """speeds over which a candidate's alignment line is re-rated (see ``align.refine``)"""
    landmarks: bool = False
    """whether its index keeps landmark tables of the spectral peaks (``index.landmarks``)"""


PEAK_TOLERANCE = (2, 1)
"""A reference peak is found when a query peak is within 2 frames (64 ms) and 1 band."""
PEAK_TIME_SHIFT = 3
PEAK_BAND_SHIFT = 2
"""Peak evidence takes the best of shifts up to 3 frames and 2 bands around the line: votes
place it to a window hop (0.125 s) and the hypothesis grid to a fraction of a semitone."""

PEAK_MIDPOINT = 4.5
"""Peak z-score (plus a quarter of the similarity margin) at which an audio match scores 0.5:
on the dev clips, 3.6 let 1 % of non-catalogue clips match (3 of 315) and 4.5 none, for
about 1 % fewer catalogue clips found."""

AUDIO = Modality("audio", f"{audio.FORMAT}+{audio.PEAKS_FORMAT}", audio.DIM,
                 audio.REFERENCE_HOP_S, audio.WINDOW_S,
                 Layout(audio.DIM, "IVF{lists},PQ60x4fs", "nprobe=16"),
                 MatchParams(similarity_floor=0.4, min_evidence=0.1, max_candidates=12,
                             similarity_midpoint=0.47, short_penalty=0.85,
                             peak_midpoint=PEAK_MIDPOINT, dense_weight=0.25),
                 landmarks=True)
"""Up to 12 candidate alignments per clip are verified, down to little evidence: with the peak
check deciding, more candidates cost little accuracy and find the true line under speech at
0 dB for 80 % of 3 s dev clips instead of 35 % with 8. Against the eval catalogue padded to
1,000 h, the candidate that gave a right answer to a dev clip was never past the 16th (3 s
clips) or the 6th (5 and 10 s); verifying 12 instead of 32 found 92.2 % of the dev clips
instead of 92.4 % there (95.0 % either way at 6 h); with the window spacing of
``LONG_QUERY_SPACING_S``, verification of a 10 s clip fell from 16 to 6 ms (p50).

4-bit product-quantiser codes searched with FAISS's SIMD fast-scan kernels: 30 bytes per
window plus the 8-byte id, in an inverted file of about 2 sqrt(windows) lists (512 at 6 h,
4,096 from about 500 h; ``Layout.lists_for``) of which each query window scans the 16
nearest. Against the eval catalogue padded to 1,000 h, on the dev clips (every 6th), 8, 16
and 32 lists found 91.9, 92.4 and 92.7 % with title and offset, FAISS taking 14, 21 and
34 ms per clip (p50); 256 lists with 32 scanned (an eighth of the codes, the setting before
segments) had taken 510 ms per 10 s eval clip in all. Unrelated music reaches lower similarity with
both band ranges than with one, so votes start at 0.4."""

VIDEO_SPEEDS = (0.9, 0.95, 1.0, 1.05, 1.1)
"""Speed hypotheses for aligning video: frame descriptors do not change with speed, only the
slope of the alignment does; 0.05 apart, a 10 s clip drifts at most one offset bin."""

VIDEO = Modality("video", video.FORMAT, video.DIM, 1.0 / VIDEO_FRAME_RATE,
                 1.0 / VIDEO_FRAME_RATE,
                 Layout(video.DIM, f"IVF{{lists}},PQ{video.DIM}x4fs", "nprobe=32"),
                 MatchParams(neighbours=40, similarity_floor=0.6, similarity_midpoint=0.75,
                             short_penalty=0.5),
                 refine_speeds=VIDEO_SPEEDS)
"""Frames of unrelated footage reach 0.53 at the 99th percentile, so votes start at 0.6.

One 4-bit code per descriptor dimension (32 bytes per frame view, plus the 8-byte id, at 4
frames and 2 views a second), in an inverted file like audio's: 1.4 MB per hour of video
measured (``benchmarks.scale --modality video``). On the video grid's dev clips (every 6th)
against the catalogue padded with 1.6 h of upside-down footage (``benchmarks.distractors``),
where the index is trained: an exact index found 98.7 % with title and offset, 21 codes of 4
bits (the setting before) 69.2 % (76.9 % with 80 neighbours), 63 codes 93.6 %, and 94.9 %
with 40 neighbours; in an inverted file of 256 lists, scanning 32 with 40 neighbours also
94.9 % (16 and 20: 92.3 %)."""

MODALITIES = (AUDIO, VIDEO)

PEAK_CANDIDATES = 8
PEAK_SEARCH_HANDICAP = 1.5
"""A clip no line of votes explains is searched by its landmarks (``index.landmarks``) in the
whole catalogue, and the 8 alignments most voted for are verified. Such a line was chosen
for its peaks among every offset of every reference, so chance lifts its peak z-score more
than that of a line the window votes chose: its margin is lowered by 1.5 (on the dev
negatives, the best line found by peaks beat the best voted line by 1.4).

Landmarks replaced a search by single peaks in the 30 references the windows voted for
most, near their hits. On every 3rd dev clip, side by side against the eval catalogue
padded to 1,000 h: 94.3 % found instead of 92.7 % (the true reference was often not among
the 30: the inverted file had not routed its windows), 2 false matches of 273 instead of 4,
clips of nothing catalogued p50 45 instead of 72 ms, 5 ms per search; against the 6 h
catalogue 94.4 % instead of 94.3 %, unmatched p50 21 instead of 53 ms."""

FUSE_TOLERANCE_S = 1.0
"""Audio and video segments of one reference whose offsets agree this closely are one match."""

FUSION_FLOOR = 0.2
"""When a clip has both tracks, each modality's candidates down to this score are kept to be
paired: two weak answers that agree on reference and offset are independent evidence, and
their fused score decides. Unpaired, each must still reach its own modality's min_score."""

LONG_QUERY_S = 6.0
LONG_QUERY_SPACING_S = 0.5
"""Clips longer than this search FAISS with one audio window per 0.5 s of each transform (a
quarter of them, see ``_search_windows``): against 1,000 h, 10 s dev clips were found as
often as with every other window (97.5 %), and FAISS time per clip fell from 30 to 17 ms;
one per 0.75 s found 95.0 %."""

REFINE_SHIFT_S = 1.0
"""How far refinement moves a video segment's middle: votes place it within a second."""

LOCALISE_RANGE_S = 30.0
DETAIL_HALF_WIDTH = 5
DETAIL_MIN_Z = 6.0
DETAIL_SIMILARITY_SLACK = 0.01
"""A refined video line is moved by up to 30 s to where the frame-to-frame detail of the clip
(each descriptor less the mean of those within 5 frames, see ``align.detail``) correlates
best with the reference's, if that peak stands 6 standard deviations above the correlations
away from it and the descriptors rate the moved line within 0.01 of the refined one: in a
held shot every line rates alike (0.99 along 30 s of a tree in the wind), and only its small
changes tell the instants apart."""

VERIFY_SPAN_S = 6.0
"""A candidate is verified over at least this much of the query (window starts)."""

READ_SPARE_S = 1.0
"""Verification reads a reference's descriptors and peaks over the span its lines can reach
(``_reach``) and this much more: the peak search's shifts and rounding stay inside it."""


@dataclass(frozen=True)
class Query:
    """A clip's stage-1 fingerprints, as a crawler computes them: either may be missing."""

    audio: BandFrames | None = None
    video: VideoFrames | None = None

    @property
    def duration_s(self) -> float:
        return max(self.audio.duration_s if self.audio else 0.0,
                   self.video.duration_s if self.video else 0.0)


def fingerprint_reference(media: MediaSource) -> tuple[float, dict[str, Fingerprints]]:
    """What registering ``media`` stores: its duration and the reference fingerprints of each
    track (descriptors every reference hop, and the audio's spectral peaks). A plain function
    of the media, so that a process pool can run it."""
    query = fingerprint_media(media)
    fingerprints = {}
    if query.audio is not None:
        vectors, times, _ = audio.descriptors(query.audio, audio.REFERENCE_HOP_S)
        if len(vectors):
            fingerprints["audio"] = Fingerprints(vectors, times, audio.peaks(query.audio))
    if query.video is not None:
        vectors, times, _ = video.descriptors(query.video, video.reference_regions(query.video))
        if len(vectors):
            order = np.argsort(times, kind="stable")  # each frame's views side by side
            fingerprints["video"] = Fingerprints(vectors[order], times[order])
    if not fingerprints:
        raise MediaError(
            "there is nothing to fingerprint: the audio is silent or shorter than 2.5 s and "
            "the picture (if any) is blank, so this media could never be matched")
    return query.duration_s, fingerprints


def _one_thread_per_process() -> None:
    """An ingest process computes one reference at a time on one core: the pool has one
    process per core it may use."""
    threadpool_limits(1)
    set_decoder_threads(1)


def fingerprint_media(media: MediaSource, max_duration_s: float = MAX_DURATION_S) -> Query:
    """Decode ``media`` once and compute the stage-1 fingerprint of each track it has
    (``MediaTooLong`` past ``max_duration_s``)."""
    decoded = decode_media(media, max_duration_s=max_duration_s)
    return Query(
        audio=None if decoded.samples is None else audio.band_frames(decoded.samples),
        video=None if decoded.frames is None else VideoFrames(decoded.frames,
                                                              decoded.frame_times))


@dataclass(frozen=True)
class _Described:
    """A query's descriptors for one modality and how to align them: descriptor group g (a
    query transform or picture region) is aligned under each hypothesis (g, time scale)."""

    vectors: np.ndarray
    times: np.ndarray
    group: np.ndarray
    hypotheses: list[tuple[int, float]]
    searched: np.ndarray
    duration_s: float
    peaks: tuple[np.ndarray, np.ndarray] | None = None
    """audio: frames and bands of the query's spectral peaks"""
    peak_map: np.ndarray | None = None
    """audio: the same peaks grown by PEAK_TOLERANCE (``align.peak_map``)"""
    band_shifts: tuple[int, ...] = ()
    """audio: each hypothesis' pitch change in bands, where peak evidence looks first"""


class _ModalIndex:
    """One modality's segmented FAISS index over the stored fingerprints (its source of
    truth), in ``index/<modality>/``."""

    def __init__(self, modality: Modality, store: Store, index_dir: Path) -> None:
        self.modality = modality
        self._store = store
        self.index = SegmentedIndex(
            index_dir / modality.name, modality.layout, {"format": modality.format},
            self._stored, lambda: sorted(store.numbers(modality.name)),
            landmarks=modality.landmarks)

    def _stored(self, number: int) -> tuple[np.ndarray, np.ndarray, Peaks | None] | None:
        """What the index holds of a stored reference; None if it is gone or its fingerprint
        file cannot be read (then it cannot be found, and ``Catalog.check`` says so: one
        damaged file must not keep the catalogue from opening)."""
        reference = self._store.by_numbers([number]).get(number)
        if reference is None:
            return None
        try:
            fingerprints = self._store.fingerprints(reference.reference_id, self.modality.name)
        except UNREADABLE as exc:
            log.error("the fingerprints of %s cannot be read (%s): it cannot be matched until "
                      "registered again", reference.reference_id, exc)
            return None
        return self._indexed(fingerprints)

    def _indexed(self, fingerprints: Fingerprints
                 ) -> tuple[np.ndarray, np.ndarray, Peaks | None]:
        """What the index holds of a reference: descriptors, their slots, and its peaks."""
        peaks = (None if fingerprints.peaks is None or not self.modality.landmarks
                 else audio.peak_frames_bands(fingerprints.peaks))
        return fingerprints.vectors, self.slots(fingerprints.times), peaks

    def add(self, number: int, fingerprints: Fingerprints) -> None:
        self.index.add(number, *self._indexed(fingerprints))

    def slots(self, times: np.ndarray) -> np.ndarray:
        return np.round(np.asarray(times) / self.modality.hop_s).astype(np.int64)


class _Owners:
    """Each reference number's tenant, as a small code in an array indexed by number: the
    match path filters the reference numbers of its FAISS and landmark hits with one
    vectorised lookup, not a query per hit."""

    def __init__(self, tenants: dict[int, str]) -> None:
        self._codes: dict[str, int] = {}
        self._of = np.full(max(tenants, default=0) + 1, -1, np.int32)
        for number, tenant in tenants.items():
            self.set(number, tenant)

    def set(self, number: int, tenant: str) -> None:
        """Note a new reference's tenant, before the index can return its number (under the
        catalogue's write lock; searches read the array as it is, lock-free)."""
        code = self._codes.setdefault(tenant, len(self._codes))
        if number >= len(self._of):
            grown = np.full(max(2 * len(self._of), number + 1), -1, np.int32)
            grown[:len(self._of)] = self._of
            self._of = grown
        self._of[number] = code

    def owned(self, numbers: np.ndarray, tenant: str) -> np.ndarray:
        """Which of ``numbers`` (-1 for no hit) are references of ``tenant``."""
        code, of = self._codes.get(tenant), self._of
        if code is None:
            return np.zeros(numbers.shape, dtype=bool)
        known = (numbers >= 0) & (numbers < len(of))
        return known & (of[np.where(known, numbers, 0)] == code)


class Catalog:
    """Register, list, delete and match references in one data directory. Thread-safe.

    Every reference belongs to a tenant. Calls that take ``tenant=None`` act on every
    tenant's references; given a tenant, they see only its own, and another tenant's
    reference is not found, exactly as an unknown id is."""

    def __init__(self, data_dir: str | Path, *, ingest_processes: int = 0) -> None:
        """``ingest_processes``: how many processes fingerprint registrations in parallel
        (started on the first registration); 0 fingerprints in the registering thread."""
        if ingest_processes < 0:
            raise ValueError(f"ingest_processes must be >= 0, got {ingest_processes}")
        self._ingest_processes = ingest_processes
        self._pool: ProcessPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        # One BLAS thread per call (a process-wide limit): concurrency comes from the
        # callers' threads, and pool threads spinning against them on a small, shared machine
        # multiply latency (measured: query descriptors 99 ms with OpenBLAS's 2 threads, 11 ms
        # with 1). FAISS's OpenMP limit is per thread: ``match`` sets it in each caller.
        threadpool_limits(1)
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.modalities = {m.name: m for m in MODALITIES}
        self._store = Store(self.data_dir)
        self._refuse_other_formats()
        index_dir = self.data_dir / "index"
        index_dir.mkdir(exist_ok=True)
        for old in [*index_dir.glob("*.faiss"), *index_dir.glob("*.json")]:
            old.unlink()  # a single-file index of an earlier version
        self._write_lock = threading.Lock()
        self._owners = _Owners(self._store.tenants())
        self._indexes = {name: _ModalIndex(m, self._store, index_dir)
                         for name, m in self.modalities.items()}

    def _refuse_other_formats(self) -> None:
        """Fingerprints of another format cannot be compared with this version's queries, and
        the media they came from is not kept: say so instead of matching wrongly."""
        other = {f: n for f, n in self._store.formats().items() if f != _FORMATS}
        if other:
            self._store.close()
            held = ", ".join(f"{n} in {f!r}" for f, n in sorted(other.items()))
            raise ValueError(
                f"{self.data_dir} holds references fingerprinted in another format ({held}); "
                f"this version computes {_FORMATS!r} and cannot compare the two. Register the "
                "media again into a new data directory.")

    # -- persistence -------------------------------------------------------------------

    def wait_for_index(self) -> None:
        """Return once no index training or merging is due or running (they run in the
        background, the catalogue serving meanwhile)."""
        for index in self._indexes.values():
            index.index.wait_idle()

    def close(self) -> None:
        for index in self._indexes.values():
            index.index.close()
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(cancel_futures=True)
                self._pool = None
        self._store.close()

    # -- references --------------------------------------------------------------------

    def register(self, media: MediaSource, *, title: str, external_id: str = "",
                 metadata: dict[str, str] | None = None, tenant: str = DEFAULT_TENANT
                 ) -> Reference:
        """Fingerprint ``media`` (a path or bytes: audio, video or both) and add it to the
        catalogue as ``tenant``'s. The same bytes twice in one tenant are a DuplicateError;
        two tenants may each register them."""
        if not title.strip():
            raise ValueError("title must not be empty")
        content_sha256 = _sha256(media)
        existing = self._store.find_sha256(content_sha256, tenant)
        if existing:
            raise DuplicateError(existing)
        duration_s, fingerprints = self._fingerprint_reference(media)
        return self.register_fingerprints(fingerprints, title=title, duration_s=duration_s,
                                          content_sha256=content_sha256,
                                          external_id=external_id, metadata=metadata,
                                          tenant=tenant)

    def register_fingerprints(self, fingerprints: dict[str, Fingerprints], *, title: str,
                              duration_s: float, content_sha256: str, external_id: str = "",
                              metadata: dict[str, str] | None = None,
                              tenant: str = DEFAULT_TENANT) -> Reference:
        """Add a reference of ``tenant`` from fingerprints computed elsewhere by
        ``fingerprint_reference`` (on a rights holder's own machines, or a benchmark's
        distractors); the media is known by its ``content_sha256``."""
        if not title.strip():
            raise ValueError("title must not be empty")
        if not tenant:
            raise ValueError("tenant must not be empty")
        if len(content_sha256) != 64 or set(content_sha256) - set("0123456789abcdef"):
            raise ValueError("content_sha256 must be 64 lower-case hex digits")
        if not duration_s > 0:
            raise ValueError(f"duration_s must be > 0, got {duration_s}")
        if not fingerprints:
            raise ValueError("no fingerprints: at least one of audio or video is needed")
        for name, fp in fingerprints.items():
            if name not in self.modalities:
                raise ValueError(f"unknown modality {name!r}; expected one of "
                                 f"{', '.join(self.modalities)}")
            dim = self.modalities[name].dim
            if fp.vectors.ndim != 2 or fp.vectors.shape[1] != dim or len(fp.times) != len(
                    fp.vectors) or len(fp.vectors) == 0:
                raise ValueError(f"{name} fingerprints must be [n > 0, {dim}] vectors with "
                                 f"n times, got {fp.vectors.shape} and {len(fp.times)}")
            if not (np.isfinite(fp.vectors).all() and np.isfinite(fp.times).all()):
                raise ValueError(f"{name} fingerprints hold NaN or infinite values")
        with self._write_lock:
            number, reference = self._store.add(
                title=title, external_id=external_id, metadata=metadata or {},
                duration_s=duration_s, content_sha256=content_sha256,
                fingerprint_format=_FORMATS, fingerprints=fingerprints, tenant=tenant)
            self._owners.set(number, tenant)
            for name, fp in fingerprints.items():
                self._indexes[name].add(number, fp)
        log.info("registered %s %r (%.1f s, %s)", reference.reference_id, title,
                 reference.duration_s,
                 ", ".join(f"{len(fp.vectors)} {name} descriptors"
                           for name, fp in fingerprints.items()))
        return reference

    def _fingerprint_reference(self, media: MediaSource
                               ) -> tuple[float, dict[str, Fingerprints]]:
        """``fingerprint_reference`` in this thread, or in the ingest pool when there is one:
        decoding and fingerprinting hold the GIL for much of their time, so only processes
        let registrations use more than one core."""
        if self._ingest_processes == 0:
            return fingerprint_reference(media)
        with self._pool_lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    self._ingest_processes, mp_context=multiprocessing.get_context("spawn"),
                    initializer=_one_thread_per_process)
            pool = self._pool
        try:
            return pool.submit(fingerprint_reference, media).result()
        except BrokenProcessPool as exc:
            with self._pool_lock:
                if self._pool is pool:
                    self._pool = None
            raise RuntimeError("the fingerprinting process died (out of memory?) while "
                               "reading this media; nothing was stored") from exc

    def get(self, reference_id: str, tenant: str | None = None) -> Reference:
        return self._store.get(reference_id, tenant)[1]

    def list(self, page_size: int = 100, page_token: str = "", tenant: str | None = None
             ) -> tuple[list[Reference], str, int]:
        """A page of references (``tenant``'s, or everyone's) in registration order, the next
        page's token ("" at the end) and the total count (of the same references)."""
        if not 1 <= page_size <= 1000:
            raise ValueError(f"page_size must be in 1..1000, got {page_size}")
        after = 0
        if page_token:
            if not page_token.isdigit():
                raise ValueError(f"page_token {page_token!r} is not one this server issued")
            after = int(page_token)
        rows = self._store.page(after, page_size + 1, tenant)
        more = len(rows) > page_size
        rows = rows[:page_size]
        next_token = str(rows[-1][0]) if more and rows else ""
        return [reference for _, reference in rows], next_token, self._store.count(tenant)

    def delete(self, reference_id: str, tenant: str | None = None) -> Reference:
        """Remove a reference (of ``tenant``, if given); returns what it was."""
        with self._write_lock:
            number, reference = self._store.delete(reference_id, tenant)
            for index in self._indexes.values():
                index.index.remove(number)
        log.info("deleted %s", reference_id)
        return reference

    def check(self) -> dict[str, Any]:
        """Whether every stored reference can be matched: its fingerprint file readable, with
        each track its record lists at this version's dimensions, and each modality's index
        holding exactly the readable references. An index found damaged when the catalogue
        opened has already been rebuilt from the fingerprints; ``rebuilt`` says why."""
        problems: list[dict[str, str]] = []
        readable: dict[str, set[int]] = {name: set() for name in self.modalities}
        after = 0
        while page := self._store.page(after, 1000):
            for number, reference in page:
                for name in reference.modalities:
                    try:
                        vectors = self._store.fingerprints(reference.reference_id, name).vectors
                    except UNREADABLE as exc:
                        problems.append({"reference_id": reference.reference_id,
                                         "problem": f"{name} fingerprints unreadable: {exc}"})
                        continue
                    if vectors.ndim != 2 or vectors.shape[1] != self.modalities[name].dim:
                        problems.append({"reference_id": reference.reference_id,
                                         "problem": f"{name} fingerprints are {vectors.shape}"})
                        continue
                    readable[name].add(number)
            after = page[-1][0]
        indexes = {}
        for name, modal in self._indexes.items():
            held = modal.index.held()
            missing, extra = readable[name] - held, held - readable[name]
            if missing or extra:
                problems.append({"index": name, "problem": f"{len(missing)} references not "
                                 f"indexed, {len(extra)} indexed but not stored"})
            indexes[name] = {"references": len(held), "windows": modal.index.ntotal,
                             "segments": modal.index.segments, "rebuilt": modal.index.rebuilt}
        return {"data_dir": str(self.data_dir), "references": self._store.count(),
                "indexes": indexes, "problems": problems}

    # -- matching ----------------------------------------------------------------------

    def match_media(self, media: MediaSource, tenant: str | None = None) -> list[Match]:
        """Identify a clip (path or bytes, audio and/or video). Nothing identifiable gives []."""
        return self.match(fingerprint_media(media), tenant)

    def match(self, query: Query, tenant: str | None = None) -> list[Match]:
        """Identify a clip from its stage-1 fingerprints (what a crawler computes and sends):
        each modality on its own, then audio and video matches that agree fused into one.
        Given a ``tenant``, only its references are candidates: the hits of every other
        tenant's are dropped before alignment, so they can neither be reported nor crowd the
        tenant's own out of the candidates verified."""
        faiss.omp_set_num_threads(1)  # this thread's searches; index rebuilds use every core
        tracks = {"audio": (query.audio, _describe_audio), "video": (query.video, _describe_video)}
        present = {name: (frames, describe) for name, (frames, describe) in tracks.items()
                   if frames is not None}
        found = {}
        for name, (frames, describe) in present.items():
            modality = self.modalities[name]
            floor = modality.params.min_score
            if len(present) > 1:
                floor = min(floor, FUSION_FLOOR)
            found[name] = self._match_modality(modality, describe(frames), floor, tenant)
        return _fuse(found.get("audio", []), found.get("video", []),
                     {m.name: m.params.min_score for m in self.modalities.values()})

    def _match_modality(self, modality: Modality, described: _Described,
                        min_score: float, tenant: str | None) -> list[Match]:
        index = self._indexes[modality.name].index
        if len(described.vectors) == 0 or index.ntotal == 0:
            return []
        params = modality.params
        hits = self._hits(modality, described, tenant)
        candidates = align.segments(hits, modality.window_s, params.similarity_floor,
                                    params.min_evidence, max_segments=params.max_candidates)
        matches = self._verified(modality, described, candidates, min_score)
        if described.peaks is not None and not any(
                match.score >= params.min_score for _, match in matches):
            matches += self._verified(modality, described,
                                      self._landmark_candidates(described, tenant),
                                      min_score, handicap=PEAK_SEARCH_HANDICAP)
        return _exclusive(matches)

    def _landmark_candidates(self, described: _Described, tenant: str | None
                             ) -> list[align.Segment]:
        """The alignments the query's landmarks vote for most in the whole catalogue, or in
        ``tenant``'s references (as the clip is: speed and pitch changes are the window
        descriptors' to find)."""
        keys, anchors = landmarks.landmarks(*described.peaks, landmarks.QUERY_SUCCESSORS)
        numbers, offsets = self._indexes["audio"].index.lookup_landmarks(keys, anchors)
        if tenant is not None:
            mine = self._owners.owned(numbers, tenant)
            numbers, offsets = numbers[mine], offsets[mine]
        unchanged = described.hypotheses.index((0, 1.0))
        return [align.Segment(
            reference=number, transform=unchanged, evidence=float(votes), query_start_s=0.0,
            query_end_s=described.duration_s, reference_start_s=offset / audio.FRAME_RATE_HZ,
            reference_end_s=offset / audio.FRAME_RATE_HZ + described.duration_s, speed=1.0)
            for number, offset, votes in landmarks.strongest(
                numbers, offsets, PEAK_TOLERANCE[0], PEAK_CANDIDATES)]

    def _verified(self, modality: Modality, described: _Described,
                  candidates: list[align.Segment], min_score: float, handicap: float = 0.0
                  ) -> list[tuple[float, Match]]:
        """Candidates rated along their lines, with their margins (less ``handicap``), down
        to ``min_score``."""
        params = modality.params
        references = self._store.by_numbers(sorted({s.reference for s in candidates}))
        slots = self._indexes[modality.name].slots
        matches: list[tuple[float, Match]] = []
        for segment in candidates:
            reference = references.get(segment.reference)
            if reference is None:  # deleted while this query ran
                continue
            try:
                stored = self._store.fingerprints(
                    reference.reference_id, modality.name,
                    _reach(segment, modality, described.duration_s))
            except FileNotFoundError:  # deleted since it was looked up
                continue
            mine = described.group == described.hypotheses[segment.transform][0]
            evidence = (described.vectors[mine], described.times[mine], stored.vectors,
                        slots(stored.times), modality.hop_s, VERIFY_SPAN_S)
            if modality.refine_speeds:
                segment, similarity = align.refine(segment, modality.refine_speeds,
                                                   REFINE_SHIFT_S, *evidence)
                segment, similarity = _localised(segment, similarity, modality.refine_speeds,
                                                 evidence)
            else:
                similarity = align.verify(segment, *evidence)
            duration = segment.query_end_s - segment.query_start_s
            peak_z = 0.0
            if described.peak_map is not None and stored.peaks is not None:
                peak_z = _peak_z(segment, stored.peaks, described)
            margin = params.margin(similarity, duration, peak_z) - handicap
            score = params.score(margin)
            if score < min_score:
                continue
            matches.append((margin, Match(
                reference_id=reference.reference_id, title=reference.title,
                external_id=reference.external_id, modality=modality.name, score=score,
                query_start_s=segment.query_start_s,
                query_end_s=min(segment.query_end_s, described.duration_s),
                reference_start_s=max(segment.reference_start_s, 0.0),
                reference_end_s=min(segment.reference_end_s, reference.duration_s),
                speed=segment.speed)))
        return matches

    def _hits(self, modality: Modality, described: _Described, tenant: str | None
              ) -> align.Hits:
        """One FAISS search for the searched descriptors; each hit (on ``tenant``'s
        references, if given) is then read under every alignment hypothesis of its
        descriptor's group."""
        k = modality.params.neighbours
        searched = described.searched
        sims, numbers, slots = self._indexes[modality.name].index.search(
            described.vectors[searched], k)
        times = np.repeat(described.times[searched], k)
        group = np.repeat(described.group[searched], k)
        valid = numbers.reshape(-1) >= 0
        if tenant is not None:
            valid &= self._owners.owned(numbers.reshape(-1), tenant)
        parts = []
        for h, (g, scale) in enumerate(described.hypotheses):
            mine = valid & (group == g)
            parts.append((times[mine], numbers.reshape(-1)[mine],
                          slots.reshape(-1)[mine] * modality.hop_s, sims.reshape(-1)[mine],
                          np.full(mine.sum(), scale, np.float32),
                          np.full(mine.sum(), h, np.int64)))
        query_time, reference, reference_time, similarity, time_scale, transform = (
            np.concatenate(column) for column in zip(*parts, strict=True))
        return align.Hits(query_time=query_time.astype(np.float32), reference=reference,
                          reference_time=reference_time.astype(np.float32),
                          similarity=similarity, time_scale=time_scale, transform=transform)


UNREADABLE = (OSError, ValueError, KeyError, zipfile.BadZipFile)
"""What reading a damaged or missing fingerprint file raises."""

_FORMATS = f"audio:{AUDIO.format},video:{VIDEO.format}"
"""The fingerprint formats a reference registered by this version carries."""


def _describe_audio(frames: BandFrames) -> _Described:
    """Query windows under every speed, pitch and tempo transform of QUERY_GRID."""
    vectors, times, group = audio.descriptors(frames, audio.QUERY_HOP_S, audio.QUERY_GRID)
    peaks = audio.peak_frames_bands(audio.peaks(frames))
    return _Described(vectors, times, group,
                      [(g, t.time_scale) for g, t in enumerate(audio.QUERY_GRID)],
                      _search_windows(times, frames.duration_s), frames.duration_s, peaks,
                      align.peak_map(*peaks, frames.values.shape, PEAK_TOLERANCE),
                      tuple(round(t.semitones * audio.BANDS_PER_SEMITONE)
                            for t in audio.QUERY_GRID))


def _describe_video(frames: VideoFrames) -> _Described:
    """Frame descriptors of every picture region, each aligned under every speed."""
    regions = video.query_regions(frames)
    vectors, times, group = video.descriptors(frames, regions)
    return _Described(vectors, times, group,
                      [(g, s) for g in range(len(regions)) for s in VIDEO_SPEEDS],
                      np.ones(len(times), dtype=bool), frames.duration_s)


def _reach(segment: align.Segment, modality: Modality, duration_s: float
           ) -> tuple[float, float]:
    """The span of the reference that rating ``segment`` can look at: the whole query on
    lines through the segment's middle at the fastest speed tried, and for video the shift
    of refinement and the move of localisation (whose own reach is the query's length
    again)."""
    speed = max((segment.speed, *modality.refine_speeds))
    middle_q = (segment.query_start_s + segment.query_end_s) / 2
    middle_r = segment.reference_start_s + (middle_q - segment.query_start_s) * segment.speed
    reach = (duration_s + modality.window_s) * speed + READ_SPARE_S
    if modality.refine_speeds:
        reach += (REFINE_SHIFT_S + LOCALISE_RANGE_S + (duration_s + modality.hop_s) * speed
                  + DETAIL_HALF_WIDTH * modality.hop_s)
    return middle_r - reach, middle_r + reach


def _localised(segment: align.Segment, similarity: float, speeds: tuple[float, ...],
               evidence: tuple) -> tuple[align.Segment, float]:
    """The segment moved within its held shot by ``align.localise``, when the detail of the
    frames places it clearly and the descriptors rate the moved line as well."""
    query_vectors, query_times, reference_vectors, reference_slots, hop_s, _ = evidence
    span_s = max(segment.speed, *speeds) * (segment.query_end_s + hop_s)
    reach = round((LOCALISE_RANGE_S + span_s) / hop_s) + DETAIL_HALF_WIDTH
    centre = round(segment.reference_start_s / hop_s)
    near = np.abs(reference_slots - centre) <= reach
    query_slots = np.round(query_times / hop_s).astype(np.int64)
    moved, z = align.localise(
        segment, speeds, align.detail(query_vectors, query_slots, DETAIL_HALF_WIDTH),
        align.detail(reference_vectors[near], reference_slots[near], DETAIL_HALF_WIDTH),
        hop_s, LOCALISE_RANGE_S)
    if z < DETAIL_MIN_Z or moved == segment:
        return segment, similarity
    moved_similarity = align.verify(moved, *evidence)
    if moved_similarity < similarity - DETAIL_SIMILARITY_SLACK:
        return segment, similarity
    return moved, moved_similarity


def _peak_z(segment: align.Segment, reference_peaks: np.ndarray, described: _Described
            ) -> float:
    """Peak evidence of an audio candidate over the query audio ``verify`` looks at."""
    lo, hi = align.verify_span(segment, described.times, VERIFY_SPAN_S)
    span = (max(lo, 0.0), min(hi + audio.WINDOW_S, described.duration_s))
    first, last = (segment.reference_start_s + (t - segment.query_start_s) * segment.speed
                   for t in span)
    frames, bands = audio.peaks_between(reference_peaks,
                                        first * audio.FRAME_RATE_HZ - PEAK_TIME_SHIFT,
                                        last * audio.FRAME_RATE_HZ + PEAK_TIME_SHIFT)
    return align.peak_evidence(segment, frames, bands, described.peak_map, audio.FRAME_RATE_HZ,
                               described.band_shifts[segment.transform], PEAK_TIME_SHIFT,
                               PEAK_BAND_SHIFT)


def _fuse(audio_matches: list[Match], video_matches: list[Match],
          min_score: dict[str, float]) -> list[Match]:
    """Pair audio and video matches of one reference at one offset into ``audio+video``
    matches: independent evidence, so the score is 1 - (1 - a)(1 - v). Each answer is then
    reported if it reaches ``min_score`` of its modality (the stricter one for a pair)."""
    fused, used = [], set()
    for a in audio_matches:
        partner = next((i for i, v in enumerate(video_matches) if i not in used
                        and v.reference_id == a.reference_id
                        and abs(_offset(a) - _offset(v)) <= FUSE_TOLERANCE_S), None)
        if partner is None:
            fused.append(a)
            continue
        used.add(partner)
        v = video_matches[partner]
        fused.append(replace(
            a, modality="audio+video", score=1.0 - (1.0 - a.score) * (1.0 - v.score),
            query_start_s=min(a.query_start_s, v.query_start_s),
            query_end_s=max(a.query_end_s, v.query_end_s),
            reference_start_s=min(a.reference_start_s, v.reference_start_s),
            reference_end_s=max(a.reference_end_s, v.reference_end_s)))
    fused += [v for i, v in enumerate(video_matches) if i not in used]
    fused_floor = max(min_score.values())
    return sorted((m for m in fused if m.score >= min_score.get(m.modality, fused_floor)),
                  key=lambda m: -m.score)


def _exclusive(candidates: list[tuple[float, Match]]) -> list[Match]:
    """Strongest first (by score margin), drop a match over the same stretch of query as a
    stronger one: a looped passage of the same reference, or another reference."""
    kept: list[Match] = []
    for _, match in sorted(candidates, key=lambda pair: -pair[0]):
        if not any(_overlap(match, stronger) > 0.5 for stronger in kept):
            kept.append(match)
    return kept


def _overlap(a: Match, b: Match) -> float:
    """Shared query time as a fraction of the shorter match."""
    shared = min(a.query_end_s, b.query_end_s) - max(a.query_start_s, b.query_start_s)
    shorter = min(a.query_end_s - a.query_start_s, b.query_end_s - b.query_start_s)
    return shared / max(shorter, 1e-6)


def _offset(match: Match) -> float:
    """Reference time at query time 0 on the match's alignment line."""
    return match.reference_start_s - match.speed * match.query_start_s


def _search_windows(times: np.ndarray, duration_s: float) -> np.ndarray:
    """Which audio windows go to FAISS: all of a short clip, one per ``LONG_QUERY_SPACING_S``
    of a long clip (it has votes to spare, and search time is proportional). Verification
    uses all."""
    if duration_s <= LONG_QUERY_S:
        return np.ones(len(times), dtype=bool)
    stride = round(LONG_QUERY_SPACING_S / audio.QUERY_HOP_S)
    return np.round(times / audio.QUERY_HOP_S).astype(np.int64) % stride == 0


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
