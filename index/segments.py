"""A FAISS index in segments: sealed, immutable segments plus one small fresh segment.

Why segments: a single growing index has to be rewritten whole to persist one more
reference (hundreds of MB at 1,000 h), and deleting from it scans every list. Here new
references go into the fresh segment, held in memory and encoded by the shared trained
quantiser; when it fills up it is *sealed*: written once to its own file and never modified
again. A deletion is a tombstone (a reference number that a sealed segment holds but the
catalogue no longer has), filtered out of every search and purged when segments are merged
in the background. Every segment shares one coarse quantiser, so a query is assigned to its
inverted lists once and each segment scans only those lists (``search_preassigned``).

The directory holds ``manifest.json`` (what the files are and which references each holds),
``quantiser-<n>.faiss`` (the trained, empty index) and ``segment-<n>.faiss``. The fresh
segment is written only when it is sealed (full, or on close): on opening, the references no
sealed segment holds are encoded again from their stored fingerprints. A crash therefore
loses nothing the fingerprint store has, and never leaves a half-written index: files are
renamed into place, the manifest last.

With ``landmarks``, each segment also carries the landmark table of the same references
(``index.landmarks``, ``segment-<n>.faiss.landmarks``), built, written, merged and purged
with it, so the two never disagree about what a segment holds.

The quantiser is trained in the background, on a sample streamed from the stored
fingerprints, once the catalogue is big enough, and again when it has grown ``retrain_growth``
times and its inverted file should have more lists (``lists_for``); meanwhile the previous
generation serves.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from index import landmarks as lm

log = logging.getLogger("clipmatch.segments")

SLOT_BITS = 24  # 2**24 windows of 0.25 s: references up to 1,165 h each
EXACT_FACTORY = "IDMap,Flat"
"""The fresh segment's index until the catalogue holds enough windows to train a quantiser."""

SEARCH_ROWS_PER_THREAD = 32
"""A search of at least twice this many query windows is split by rows across the search
threads: FAISS releases the GIL, so one clip is searched on every idle core (a 10 s clip's
106 windows against 1,000 h: 10 instead of 18 ms on 2 cores; 4 clients at once took as long
either way). A 3 s clip's 35 are not worth a hand-off."""

RETRY_S = 60.0
"""Background maintenance that failed (a disk full, say) is tried again after this long."""

Peaks = tuple[np.ndarray, np.ndarray]
Source = Callable[[int], "tuple[np.ndarray, np.ndarray, Peaks | None] | None"]
"""A reference number's stored (vectors, slots, spectral peaks as frames and bands, if it has
any), or None once it has been deleted."""


class _Closing(Exception):
    """The index is closing: background work stops where it is, leaving nothing swapped in."""


class ReadWriteLock:
    """Many concurrent searches (FAISS releases the GIL) or one writer."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writing:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            while self._writing or self._readers:
                self._cond.wait()
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


@dataclass(frozen=True)
class Layout:
    """How one modality's vectors are indexed: ``factory`` is a FAISS factory string in which
    ``{lists}`` (if present) stands for the number of inverted lists, chosen from the
    catalogue's size when the quantiser is trained (``lists_for``); ``search_params`` uses
    FAISS's ParameterSpace syntax (e.g. ``"nprobe=32"``)."""

    dim: int
    factory: str
    search_params: str = ""
    train_min: int = 20_000
    """windows before a quantiser is trained (exact search until then: small anyway)"""
    train_max: int = 200_000
    """training sample cap: quantiser quality stops improving long before this"""
    seal_windows: int = 500_000
    """the fresh segment is sealed at this size (about 35 h of audio), and on close; after a
    crash it is encoded again at start"""
    merge_fanin: int = 4
    """this many sealed segments of one size tier are merged into one"""
    purge_fraction: float = 0.2
    """a sealed segment is rewritten once this share of its references is deleted"""
    retrain_growth: float = 4.0
    """retrain once the catalogue has grown this much and should have more lists"""
    lists_per_root: float = 2.0
    """inverted lists per square root of the windows (``lists_for``)"""
    max_lists: int = 4096

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"dim must be >= 1, got {self.dim}")
        if self.merge_fanin < 2:
            raise ValueError(f"merge_fanin must be >= 2, got {self.merge_fanin}")
        if self.retrain_growth <= 1:
            raise ValueError(f"retrain_growth must be > 1, got {self.retrain_growth}")
        if not self.train_min <= self.train_max:
            raise ValueError("train_min must not exceed train_max")
        self.trains  # noqa: B018 - a bad factory string fails now, not at training time

    @functools.cached_property
    def trains(self) -> bool:
        """Whether the factory's index needs training (a quantiser or codebook)."""
        factory = self.factory_for(self.train_min)
        try:
            index = faiss.index_factory(self.dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            reason = str(exc).rsplit("Error: ", 1)[-1]  # without FAISS's C++ source location
            raise ValueError(f"FAISS cannot build {factory!r}: {reason}") from exc
        return not index.is_trained

    def lists_for(self, windows: int) -> int:
        """Inverted lists for a catalogue of ``windows``: a power of two near
        ``lists_per_root * sqrt(windows)``, at most ``max_lists`` and no more than the
        training sample can fit (FAISS wants 39 training points per centroid).

        Why the square root: a query window costs one distance per list (assignment) plus
        one per code in the lists it scans, which grow as windows / lists; the sum is least
        near lists ~ sqrt(windows). On the dev clips against the 6 h catalogue (86,000
        windows), 512 lists searched 10 s clips in 27 ms against 29 ms for 128 and 32 ms
        for 2,048, finding the same clips (95.0, 94.7 and 95.0 %)."""
        wanted = max(1.0, self.lists_per_root * math.sqrt(windows))
        fits = max(1.0, min(windows, self.train_max) / 39)
        return int(min(2 ** round(math.log2(wanted)), 2 ** int(math.log2(fits)), self.max_lists))

    def factory_for(self, windows: int) -> str:
        return self.factory.replace("{lists}", str(self.lists_for(windows)))


@dataclass(frozen=True, eq=False)
class Segment:
    """A sealed segment: an index no one writes to, and the references it holds."""

    name: str
    index: faiss.Index
    numbers: frozenset[int]
    landmarks: lm.Landmarks | None = None


class SegmentedIndex:
    """Thread-safe add / remove / search over sealed segments and one fresh segment, kept in
    ``directory`` (see the module docstring). ``source`` reads a reference's stored vectors
    back; ``live`` lists the numbers of the references the catalogue holds now."""

    def __init__(self, directory: Path, layout: Layout, identity: dict,
                 source: Source, live: Callable[[], list[int]], *, landmarks: bool = False,
                 search_threads: int | None = None) -> None:
        """``landmarks``: keep a landmark table per segment (``lookup_landmarks``);
        ``search_threads``: how many threads one search may use (default: one per core)."""
        self.layout = layout
        self._dir = directory
        self._dir.mkdir(parents=True, exist_ok=True)
        self._landmarks = landmarks
        self._identity = {"dim": layout.dim, "factory": layout.factory, **identity,
                          **({"landmarks": lm.FORMAT} if landmarks else {})}
        self._source = source
        self._live = live
        self._lock = ReadWriteLock()
        self._search_threads = search_threads or os.cpu_count() or 1
        self._search_pool = ThreadPoolExecutor(
            self._search_threads, thread_name_prefix="search",
            initializer=faiss.omp_set_num_threads, initargs=(1,))
        self._quantiser: faiss.Index | None = None
        self._quantiser_name = ""
        self._built = EXACT_FACTORY
        self.trained_on = 0
        self._sealed: tuple[Segment, ...] = ()
        self._tombstones: frozenset[int] = frozenset()
        self._fresh = faiss.index_factory(layout.dim, EXACT_FACTORY, faiss.METRIC_INNER_PRODUCT)
        self._fresh_landmarks = self._empty_landmarks()
        self._fresh_numbers: set[int] = set()
        self._counter = 0
        self._naming = threading.Lock()
        self._work = threading.Condition()
        self._closed = False
        self._busy = False
        self.rebuilt = ""
        """why the index found at opening could not be used and was rebuilt ("" if it could)"""
        self._open()
        self._worker = threading.Thread(target=self._maintain, name="segments", daemon=True)
        self._worker.start()

    # -- state -------------------------------------------------------------------------

    @property
    def ntotal(self) -> int:
        return int(self._fresh.ntotal) + sum(int(s.index.ntotal) for s in self._sealed)

    @property
    def factory(self) -> str:
        """The factory string of the index now serving (the exact one before training)."""
        return self._built

    @property
    def segments(self) -> int:
        return len(self._sealed)

    def _manifest(self) -> dict:
        return {**self._identity, "built": self._built, "trained_on": self.trained_on,
                "quantiser": self._quantiser_name, "counter": self._counter,
                "segments": [{"file": s.name, "windows": int(s.index.ntotal),
                              "numbers": sorted(s.numbers)} for s in self._sealed]}

    def _write_manifest(self, obsolete: list[str] = ()) -> None:
        """Record the segments now serving, then remove the files of ``obsolete`` ones."""
        _write_atomically(self._dir / "manifest.json",
                          lambda tmp: tmp.write_text(json.dumps(self._manifest())))
        for name in obsolete:
            (self._dir / name).unlink(missing_ok=True)
            (self._dir / (name + lm.Landmarks.SUFFIX)).unlink(missing_ok=True)

    def _open(self) -> None:
        """Load the sealed segments the manifest lists and encode the rest afresh; anything
        missing, damaged or built for other settings is rebuilt from the fingerprints."""
        live = set(self._live())
        try:
            manifest = json.loads((self._dir / "manifest.json").read_text())
            if {k: manifest.get(k) for k in self._identity} != self._identity:
                raise ValueError("built for other settings")
            self._counter = int(manifest["counter"])
            if manifest["quantiser"]:
                self._set_quantiser(self._read(manifest["quantiser"]), manifest["quantiser"],
                                    manifest["built"], int(manifest["trained_on"]))
            sealed = []
            for entry in manifest["segments"]:
                index = self._read(entry["file"])
                if index.ntotal != entry["windows"]:
                    raise ValueError(f"{entry['file']} holds {index.ntotal} windows, "
                                     f"expected {entry['windows']}")
                landmarks = self._read_landmarks(entry["file"]) if self._landmarks else None
                sealed.append(Segment(entry["file"], index, frozenset(entry["numbers"]),
                                      landmarks))
            self._sealed = tuple(sealed)
        except FileNotFoundError:
            if any(self._dir.glob("*.faiss")):
                self.rebuilt = "index manifest missing"
                log.warning("%s: index manifest missing; rebuilding from fingerprints",
                            self._dir.name)
            self._reset()
        except (ValueError, KeyError, TypeError, RuntimeError, OSError) as exc:
            self.rebuilt = f"index unusable ({exc})"
            log.warning("%s index unusable (%s); rebuilding from fingerprints", self._dir.name,
                        exc)
            self._reset()
        if self._quantiser is None and not self.layout.trains:
            factory = self.layout.factory_for(0)
            self._set_quantiser(faiss.index_factory(self.layout.dim, factory,
                                                    faiss.METRIC_INNER_PRODUCT), "", factory, 0)
        held = set().union(*(s.numbers for s in self._sealed))
        self._tombstones = frozenset(held - live)
        for number in sorted(live - held):
            if self._quantiser is None and self._fresh.ntotal >= self.layout.train_min:
                # Too big to search exactly: train before serving (the worker is not
                # running yet), on every stored reference.
                self._retrain()
                break
            self._add_fresh(number)

    def _reset(self) -> None:
        self._quantiser, self._quantiser_name, self.trained_on = None, "", 0
        self._sealed = ()
        self._fresh = faiss.index_factory(self.layout.dim, EXACT_FACTORY,
                                          faiss.METRIC_INNER_PRODUCT)
        self._fresh_landmarks = self._empty_landmarks()
        self._fresh_numbers = set()
        self._write_manifest([p.name for p in self._dir.glob("*.faiss*")])  # what was there

    def _read_landmarks(self, name: str) -> lm.Landmarks:
        path = self._dir / (name + lm.Landmarks.SUFFIX)
        if not path.exists():  # not "manifest missing": the manifest is there
            raise ValueError(f"{path.name} is missing")
        return lm.Landmarks.read(path)

    def _read(self, name: str) -> faiss.Index:
        index = faiss.read_index(str(self._dir / name))
        if index.d != self.layout.dim:
            raise ValueError(f"{name} holds {index.d}-d vectors, expected {self.layout.dim}")
        if self.layout.search_params and faiss.try_extract_index_ivf(index) is not None:
            # (an exact segment, sealed before training, has no search parameters)
            faiss.ParameterSpace().set_index_parameters(index, self.layout.search_params)
        return index

    def _set_quantiser(self, quantiser: faiss.Index, name: str, factory: str,
                       trained_on: int) -> None:
        self._quantiser, self._quantiser_name = quantiser, name
        self._built, self.trained_on = factory, trained_on
        self._fresh, self._fresh_landmarks = self._empty(), self._empty_landmarks()

    def _empty(self) -> faiss.Index:
        """A new segment: the trained quantiser with no vectors (same search parameters)."""
        if self._quantiser is None:
            return faiss.index_factory(self.layout.dim, EXACT_FACTORY,
                                       faiss.METRIC_INNER_PRODUCT)
        return faiss.clone_index(self._quantiser)

    def _empty_landmarks(self) -> lm.Landmarks | None:
        return lm.Landmarks() if self._landmarks else None

    def _next_name(self, kind: str) -> str:
        with self._naming:
            self._counter += 1
            return f"{kind}-{self._counter:06d}.faiss"

    # -- writes ------------------------------------------------------------------------

    def add(self, number: int, vectors: np.ndarray, slots: np.ndarray,
            peaks: Peaks | None = None) -> None:
        """Add a reference's vectors (and landmarks from its ``peaks``) to the fresh segment;
        seal it once it is full."""
        if len(vectors) == 0:
            return
        with self._lock.write():
            self._encode(self._fresh, self._fresh_landmarks, number, vectors, slots, peaks)
            self._fresh_numbers.add(number)
            if self._quantiser is not None and self._fresh.ntotal >= self.layout.seal_windows:
                self._seal()
        self._wake()

    def _add_fresh(self, number: int) -> None:
        stored = self._source(number)
        if stored is not None and len(stored[0]):
            self._encode(self._fresh, self._fresh_landmarks, number, *stored)
            self._fresh_numbers.add(number)

    @staticmethod
    def _encode(index: faiss.Index, landmarks: lm.Landmarks | None, number: int,
                vectors: np.ndarray, slots: np.ndarray, peaks: Peaks | None) -> None:
        ids = (np.int64(number) << SLOT_BITS) | np.asarray(slots, dtype=np.int64)
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)
        if landmarks is not None and peaks is not None:
            landmarks.add(number, peaks)

    def _seal(self) -> None:
        """Write the fresh segment to its own file and start an empty one (under the lock)."""
        name = self._next_name("segment")
        self._write_segment(name, self._fresh, self._fresh_landmarks)
        self._sealed = (*self._sealed, Segment(name, self._fresh, frozenset(self._fresh_numbers),
                                               self._fresh_landmarks))
        self._fresh, self._fresh_landmarks = self._empty(), self._empty_landmarks()
        self._fresh_numbers = set()
        self._write_manifest()

    def _write_segment(self, name: str, index: faiss.Index, landmarks: lm.Landmarks | None
                       ) -> None:
        """A segment's files, landmarks first: the index file's presence means both are."""
        if landmarks is not None:
            _write_atomically(self._dir / (name + lm.Landmarks.SUFFIX), landmarks.write)
        _write_atomically(self._dir / name, lambda tmp: faiss.write_index(index, str(tmp)))

    def remove(self, number: int) -> None:
        """Forget a reference: at once from the fresh segment, as a tombstone from sealed ones."""
        with self._lock.write():
            if number in self._fresh_numbers:
                self._fresh.remove_ids(_range(number))
                if self._fresh_landmarks is not None:
                    self._fresh_landmarks.remove(number)
                self._fresh_numbers.discard(number)
            if any(number in s.numbers for s in self._sealed):
                self._tombstones = self._tombstones | {number}
        self._wake()

    def held(self) -> frozenset[int]:
        """The references this index can find (deleted ones left out)."""
        with self._lock.read():
            return frozenset(set().union(*(s.numbers for s in self._sealed),
                                         self._fresh_numbers) - self._tombstones)

    # -- search ------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top-``k`` neighbours over every segment: (similarities, reference numbers, slots);
        missing = -1."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        with self._lock.read():
            parts = self._search_rows(queries, k)
            tombstones = self._tombstones
        sims = np.concatenate([p[0] for p in parts], axis=1)
        ids = np.concatenate([p[1] for p in parts], axis=1)
        if tombstones:
            dead = np.isin(ids >> SLOT_BITS, np.fromiter(tombstones, np.int64)) & (ids >= 0)
            ids = np.where(dead, -1, ids)
        sims = np.where(ids >= 0, sims, -np.inf)
        if sims.shape[1] > k:
            best = np.argsort(-sims, axis=1, kind="stable")[:, :k]
            sims, ids = np.take_along_axis(sims, best, 1), np.take_along_axis(ids, best, 1)
        valid = ids >= 0
        return (np.where(valid, sims, -1.0).astype(np.float32),
                np.where(valid, ids >> SLOT_BITS, -1),
                np.where(valid, ids & ((1 << SLOT_BITS) - 1), -1))

    def lookup_landmarks(self, keys: np.ndarray, anchors: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray]:
        """Every landmark entry under the query's ``keys`` in every segment, deleted
        references left out: (reference numbers, reference frame at query frame 0);
        ``anchors`` are the query frames of the keys (see ``index.landmarks``)."""
        if not self._landmarks:
            raise ValueError("this index keeps no landmarks")
        with self._lock.read():
            # One table per segment, looked up in the search threads (numpy's binary
            # searches release the GIL): 10 s clips at 1,000 h, 6 instead of 10 ms.
            found = list(self._search_pool.map(lambda part: part.lookup(keys, anchors),
                                               [s.landmarks for s in self._sealed]
                                               + [self._fresh_landmarks]))
            tombstones = self._tombstones
        numbers = np.concatenate([f[0] for f in found])
        offsets = np.concatenate([f[1] for f in found])
        if tombstones:
            alive = ~np.isin(numbers, np.fromiter(tombstones, np.int64))
            numbers, offsets = numbers[alive], offsets[alive]
        return numbers, offsets

    def _search_rows(self, queries: np.ndarray, k: int) -> list[tuple[np.ndarray, ...]]:
        """``_search_segments``, the query rows split across the search threads."""
        chunks = min(self._search_threads, len(queries) // SEARCH_ROWS_PER_THREAD)
        if chunks < 2:
            return self._search_segments(queries, k)
        pieces = list(self._search_pool.map(lambda rows: self._search_segments(rows, k),
                                            np.array_split(queries, chunks)))
        return [tuple(np.concatenate(columns) for columns in zip(*by_segment, strict=True))
                for by_segment in zip(*pieces, strict=True)]

    def _search_segments(self, queries: np.ndarray, k: int) -> list[tuple[np.ndarray, ...]]:
        segments = [s.index for s in self._sealed] + [self._fresh]
        ivf = None if self._quantiser is None else faiss.try_extract_index_ivf(self._quantiser)
        if ivf is None:
            return [s.search(queries, k) for s in segments]
        distances, lists = ivf.quantizer.search(queries, ivf.nprobe)
        return [faiss.extract_index_ivf(s).search_preassigned(queries, k, lists, distances)
                for s in segments]

    # -- background work ---------------------------------------------------------------

    def _wake(self) -> None:
        with self._work:
            self._work.notify_all()

    def _maintain(self) -> None:
        """Background thread: retrain when due, else merge segments when due."""
        while True:
            with self._work:
                while not self._closed and not self._due():
                    self._work.wait(timeout=60.0)
                if self._closed:
                    return
                self._busy = True
            failed = False
            try:
                if self._retrain_due():
                    self._retrain()
                elif (group := self._merge_group()) is not None:
                    self._merge(group)
            except _Closing:
                return
            except Exception:  # keep serving what there is; try again in a while
                log.exception("%s: background index maintenance failed", self._dir.name)
                failed = True
            with self._work:
                self._busy = False
                self._work.notify_all()
                if failed:
                    self._work.wait(timeout=RETRY_S)

    def _due(self) -> bool:
        return self._retrain_due() or self._merge_group() is not None

    def wait_idle(self) -> None:
        """Block until no background work is due or running (tests, benchmarks, close)."""
        with self._work:
            while not self._closed and (self._busy or self._due()):
                self._work.wait(timeout=1.0)

    def close(self) -> None:
        """Stop background work (a merge or training under way is abandoned: the next start
        finds it due again) and seal the fresh segment, so the next start reads it instead
        of encoding it again."""
        with self._work:
            self._closed = True
            self._work.notify_all()
        self._worker.join()
        self._search_pool.shutdown()
        with self._lock.write():
            if self._fresh.ntotal:
                self._seal()

    def _retrain_due(self) -> bool:
        if not self.layout.trains:
            return False
        total = self.ntotal
        if self._quantiser is None:
            return total >= self.layout.train_min
        return (total >= self.layout.retrain_growth * self.trained_on
                and self.layout.factory_for(total) != self._built)

    def _retrain(self) -> None:
        """Train a quantiser for the catalogue as the store holds it and encode every
        reference with it into one new segment, reading the stored fingerprints one
        reference at a time; references registered meanwhile join the new fresh segment when
        it takes over, and those deleted meanwhile become its tombstones."""
        numbers = self._live()
        sample, total = self._sample(numbers)
        factory = self.layout.factory_for(total)
        log.info("%s: training %s on %d of the catalogue's %d windows", self._dir.name,
                 factory, len(sample), total)
        quantiser = faiss.index_factory(self.layout.dim, factory, faiss.METRIC_INNER_PRODUCT)
        if not quantiser.is_trained:
            quantiser.train(sample)
        if self.layout.search_params:
            faiss.ParameterSpace().set_index_parameters(quantiser, self.layout.search_params)
        index, landmarks = faiss.clone_index(quantiser), self._empty_landmarks()
        held = self._encode_stored(index, landmarks, numbers)
        quantiser_name, segment_name = self._next_name("quantiser"), self._next_name("segment")
        _write_atomically(self._dir / quantiser_name,
                          lambda tmp: faiss.write_index(quantiser, str(tmp)))
        self._write_segment(segment_name, index, landmarks)
        with self._lock.write():
            obsolete = [s.name for s in self._sealed] + [self._quantiser_name] * bool(
                self._quantiser_name)
            self._set_quantiser(quantiser, quantiser_name, factory, total)
            self._sealed = (Segment(segment_name, index, frozenset(held), landmarks),)
            live = set(self._live())
            self._tombstones = frozenset(held - live)
            self._fresh_numbers = set()
            for number in sorted(live - held):
                self._add_fresh(number)
            self._write_manifest(obsolete)
        log.info("%s: %s serving %d windows", self._dir.name, factory, self.ntotal)

    def _encode_stored(self, index: faiss.Index, landmarks: lm.Landmarks | None,
                       numbers: list[int]) -> set[int]:
        """Encode the stored vectors (and landmarks) of ``numbers``, reading one reference at
        a time; returns those still stored. Stops if the index is closing."""
        held = set()
        for number in numbers:
            self._stop_if_closing()
            stored = self._source(number)
            if stored is not None and len(stored[0]):
                self._encode(index, landmarks, number, *stored)
                held.add(number)
        return held

    def _stop_if_closing(self) -> None:
        if self._closed:
            raise _Closing

    def _sample(self, numbers: list[int]) -> tuple[np.ndarray, int]:
        """A uniform sample of at most ``train_max`` stored windows (reservoir sampling, so
        one pass reading reference by reference), and how many windows there are."""
        cap, rng = self.layout.train_max, np.random.default_rng(0)
        reservoir = np.empty((cap, self.layout.dim), np.float32)
        seen = 0
        for number in numbers:
            self._stop_if_closing()
            stored = self._source(number)
            if stored is None:
                continue
            vectors = np.asarray(stored[0], dtype=np.float32)
            fill = max(0, min(cap - seen, len(vectors)))
            reservoir[seen:seen + fill] = vectors[:fill]
            rest = vectors[fill:]
            if len(rest):  # Algorithm R: the t-th window replaces a random slot w.p. cap / t
                slots = rng.integers(0, seen + fill + np.arange(1, len(rest) + 1))
                keep = slots < cap
                reservoir[slots[keep]] = rest[keep]
            seen += len(vectors)
        return reservoir[:min(seen, cap)], seen

    def _merge_group(self) -> list[Segment] | None:
        """The sealed segments to merge next: one holding too many deleted references, or
        ``merge_fanin`` of one size tier (tier = log base fan-in of windows per seal)."""
        sealed, tombstones = self._sealed, self._tombstones
        for segment in sealed:
            if len(segment.numbers & tombstones) >= max(1.0, self.layout.purge_fraction
                                                         * len(segment.numbers)):
                return [segment]
        tiers: dict[int, list[Segment]] = {}
        for segment in sealed:
            ratio = max(int(segment.index.ntotal), 1) / self.layout.seal_windows
            tiers.setdefault(int(math.log(max(ratio, 1.0), self.layout.merge_fanin)),
                             []).append(segment)
        for tier in sorted(tiers):
            if len(tiers[tier]) >= self.layout.merge_fanin:
                return tiers[tier][: self.layout.merge_fanin]
        return None

    def _merge(self, group: list[Segment]) -> None:
        """One segment holding the group's live references, encoded again from the stored
        fingerprints beside the serving segments (which stay untouched: searches go on),
        then swapped in. FAISS's own ``merge_from`` is not used: on fast-scan inverted
        lists, merging a merged index again corrupted the heap (faiss-cpu 1.15.1)."""
        merged, landmarks = self._empty(), self._empty_landmarks()
        dead = set().union(*(s.numbers for s in group)) & self._tombstones
        held = self._encode_stored(merged, landmarks,
                                   sorted(set().union(*(s.numbers for s in group)) - dead))
        name = self._next_name("segment")
        self._write_segment(name, merged, landmarks)
        with self._lock.write():
            first = self._sealed.index(group[0])
            rest = [s for s in self._sealed if s not in group]
            self._sealed = (*rest[:first], Segment(name, merged, frozenset(held), landmarks),
                            *rest[first:])
            numbers = set().union(*(s.numbers for s in self._sealed))
            self._tombstones = frozenset(self._tombstones & numbers)
            self._write_manifest([s.name for s in group])
        log.info("%s: merged %d segments into %s (%d windows, %d deleted references purged)",
                 self._dir.name, len(group), name, merged.ntotal, len(dead))

def _range(number: int) -> faiss.IDSelector:
    return faiss.IDSelectorRange(number << SLOT_BITS, (number + 1) << SLOT_BITS)


def _write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Write through a temporary file, flushed to disk, then renamed over ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    tmp.replace(path)
