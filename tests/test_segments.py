"""The segmented FAISS index on real descriptors of the fixture music: search over sealed and
fresh segments answers as one index would, survives restarts and damaged files, forgets
deleted references, merges in the background, and keeps what is registered while it trains.
Sizes are scaled down (a segment of 60 windows instead of 100,000) so that every stage runs
on the fixtures' two minutes of music. Each segment's landmark table (``index.landmarks``)
goes through every stage with it."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import faiss
import numpy as np
import pytest

from fingerprint.audio import (
    DIM,
    FRAME_RATE_HZ,
    REFERENCE_HOP_S,
    band_frames,
    descriptors,
    peak_frames_bands,
    peaks,
)
from fingerprint.decode import decode_audio
from index import landmarks
from index.segments import SEARCH_ROWS_PER_THREAD, SLOT_BITS, Layout, SegmentedIndex
from tests.media import FIXTURES

LAYOUT = Layout(DIM, "IVF{lists},PQ60x4fs", "nprobe=2", train_min=200, train_max=1_000,
                seal_windows=60, merge_fanin=2, retrain_growth=2.0, lists_per_root=0.4)
"""Trained at 200 windows with 4 lists (0.4 * sqrt(200) = 5.7, but 200 samples fit only 5
centroids), retrained at 400 with 8."""
REFERENCE_WINDOWS = 20


@pytest.fixture(scope="module")
def references() -> dict[int, tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]]:
    """Every fixture's descriptors cut into references of 20 windows (5 s), each with the
    spectral peaks of its 5 s (frames counted from its start)."""
    found = {}
    for path in sorted(FIXTURES.glob("*.ogg")):
        frames = band_frames(decode_audio(str(path)))
        vectors, times, _ = descriptors(frames, REFERENCE_HOP_S)
        slots = np.round(times / REFERENCE_HOP_S).astype(np.int64)
        peak_frames, bands = peak_frames_bands(peaks(frames))
        for start in range(0, len(vectors) - REFERENCE_WINDOWS + 1, REFERENCE_WINDOWS):
            part = slice(start, start + REFERENCE_WINDOWS)
            first = round(times[start] * FRAME_RATE_HZ)
            mine = (peak_frames >= first) & (peak_frames < first + 5 * FRAME_RATE_HZ)
            found[len(found) + 1] = (vectors[part], slots[part],
                                     (peak_frames[mine] - first, bands[mine]))
    assert len(found) >= 12
    return found


class Catalogue:
    """What the index reads back from: the references stored now (deletion removes one)."""

    def __init__(self) -> None:
        self.stored: dict[int, tuple] = {}

    def source(self, number: int) -> tuple | None:
        return self.stored.get(number)

    def live(self) -> list[int]:
        return sorted(self.stored)

    def open(self, directory: Path, layout: Layout = LAYOUT, search_threads: int | None = None
             ) -> SegmentedIndex:
        return SegmentedIndex(directory, layout, {"format": "test"}, self.source, self.live,
                              landmarks=True, search_threads=search_threads)


def filled(directory: Path, references: dict) -> tuple[Catalogue, SegmentedIndex]:
    catalogue = Catalogue()
    index = catalogue.open(directory)
    for number, reference in references.items():
        catalogue.stored[number] = reference
        index.add(number, *reference)
        index.wait_idle()
    return catalogue, index


def self_found(index: SegmentedIndex, references: dict) -> float:
    """Share of the references' windows whose nearest neighbour is themselves."""
    found = total = 0
    for number, (vectors, slots, _) in references.items():
        _, numbers, hit_slots = index.search(vectors, 1)
        found += int(((numbers[:, 0] == number) & (hit_slots[:, 0] == slots)).sum())
        total += len(vectors)
    return found / total


def landmark_lines(index: SegmentedIndex, references: dict) -> dict[int, tuple[int, int]]:
    """Each reference's strongest line by its own peaks' landmarks: (number, offset)."""
    lines = {}
    for number, (_, _, reference_peaks) in references.items():
        keys, anchors = landmarks.landmarks(*reference_peaks, landmarks.QUERY_SUCCESSORS)
        found = landmarks.strongest(*index.lookup_landmarks(keys, anchors), 2, 1)
        lines[number] = found[0][:2] if found else (-1, 0)
    return lines


def test_segments_answer_as_one_index(tmp_path: Path, references: dict) -> None:
    """Sealed segments, merged ones and the fresh one together return the neighbours one
    index holding every vector returns, with the same similarities."""
    _, index = filled(tmp_path / "index", references)
    assert index.factory.startswith("IVF") and index.segments >= 2
    one = faiss.clone_index(index._quantiser)
    for number, (vectors, slots, _) in references.items():
        one.add_with_ids(vectors, (np.int64(number) << SLOT_BITS) | slots)
    queries = np.concatenate([v[::7] for v, _, _ in references.values()])
    sims, numbers, slots = index.search(queries, 10)
    one_sims, one_ids = one.search(queries, 10)
    np.testing.assert_allclose(sims, one_sims, atol=1e-5)
    agree = np.mean([set(zip(n, s, strict=True))
                     == set(zip(i >> SLOT_BITS, i & ((1 << SLOT_BITS) - 1), strict=True))
                     for n, s, i in zip(numbers, slots, one_ids, strict=True)])
    assert agree > 0.95  # rows differ only where two neighbours tie at the k-th place
    assert self_found(index, references) > 0.9
    assert landmark_lines(index, references) == {n: (n, 0) for n in references}
    index.close()


def test_a_search_split_across_threads_answers_as_one_thread(tmp_path: Path,
                                                            references: dict) -> None:
    """Query rows searched in several threads get exactly the neighbours one thread finds."""
    catalogue, index = filled(tmp_path / "index", references)
    index.close()
    queries = np.concatenate([v for v, _, _ in references.values()])
    assert len(queries) >= 4 * SEARCH_ROWS_PER_THREAD  # enough to be split four ways
    answers = []
    for threads in (1, 4):
        index = catalogue.open(tmp_path / "index", search_threads=threads)
        answers.append(index.search(queries, 10))
        index.close()
    for one, split in zip(*answers, strict=True):
        np.testing.assert_array_equal(one, split)


def test_restart_loads_sealed_segments_and_rebuilds_damaged_ones(
        tmp_path: Path, references: dict) -> None:
    catalogue, index = filled(tmp_path / "index", references)
    queries = np.concatenate([v[::5] for v, _, _ in references.values()])
    before = index.search(queries, 5)
    lines = landmark_lines(index, references)
    segments, factory = index.segments, index.factory
    index.close()  # seals the fresh segment

    index = catalogue.open(tmp_path / "index")
    assert (index.segments, index.factory) == (segments + 1, factory)
    for got, expected in zip(index.search(queries, 5), before, strict=True):
        np.testing.assert_array_equal(got, expected)
    assert landmark_lines(index, references) == lines
    index.close()

    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    (tmp_path / "index" / manifest["segments"][0]["file"]).write_bytes(b"damaged")
    index = catalogue.open(tmp_path / "index")
    index.wait_idle()  # retrained from the stored fingerprints in the background
    assert index.factory == factory
    assert self_found(index, references) > 0.9
    assert landmark_lines(index, references) == lines
    index.close()


def test_deleted_references_vanish_at_once_and_are_purged(tmp_path: Path,
                                                          references: dict) -> None:
    catalogue, index = filled(tmp_path / "index", references)
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    sealed = max(manifest["segments"], key=lambda s: s["windows"])["numbers"]
    assert len(sealed) == 20
    fresh = sorted(set(references) - {n for s in manifest["segments"] for n in s["numbers"]})
    assert fresh, "some references should still be in the fresh segment"
    gone = [*sealed[:4], fresh[-1]]  # a fifth of a sealed segment: enough to purge it
    windows = index.ntotal
    queries = np.concatenate([references[n][0] for n in gone])
    for number in gone:
        del catalogue.stored[number]
        index.remove(number)
        _, numbers, _ = index.search(queries, 20)
        assert number not in numbers
        assert number not in index.lookup_landmarks(*landmarks.landmarks(
            *references[number][2], landmarks.QUERY_SUCCESSORS))[0]
    index.wait_idle()
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    held = {n for s in manifest["segments"] for n in s["numbers"]}
    assert not held & set(gone)
    assert index.ntotal == windows - len(gone) * REFERENCE_WINDOWS
    kept = {n: r for n, r in references.items() if n not in gone}
    assert self_found(index, kept) > 0.9
    assert landmark_lines(index, kept) == {n: (n, 0) for n in kept}
    index.close()
    index = catalogue.open(tmp_path / "index")
    _, numbers, _ = index.search(queries, 20)
    assert not set(numbers.reshape(-1)) & set(gone)
    assert landmark_lines(index, kept) == {n: (n, 0) for n in kept}
    index.close()


def test_references_added_while_training_are_kept(tmp_path: Path, references: dict) -> None:
    """The quantiser trains in the background from the stored fingerprints; registrations
    meanwhile go to the serving (exact) index and join the trained one when it takes over."""
    catalogue = Catalogue()
    release = threading.Event()

    def slow_source(number: int) -> tuple | None:
        if threading.current_thread().name == "segments":
            release.wait(timeout=30)
        return catalogue.source(number)

    index = SegmentedIndex(tmp_path / "index", LAYOUT, {"format": "test"}, slow_source,
                           catalogue.live)
    numbers = list(references)
    for number in numbers:
        catalogue.stored[number] = references[number]
        index.add(number, *references[number])
    assert index.factory == "IDMap,Flat"  # training waits on the source
    assert self_found(index, references) > 0.99  # exact meanwhile
    release.set()
    index.wait_idle()
    assert index.factory.startswith("IVF")
    assert self_found(index, references) > 0.9
    index.close()


def test_layout_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="merge_fanin"):
        Layout(DIM, "IVF{lists},Flat", merge_fanin=1)
    with pytest.raises(ValueError, match=r"cannot build 'IVF256,NoSuchCode': .*could not parse"):
        Layout(DIM, "IVF{lists},NoSuchCode")
    assert (LAYOUT.lists_for(200), LAYOUT.lists_for(400)) == (4, 8)
    default = Layout(DIM, "IVF{lists},Flat")
    assert [default.lists_for(n) for n in (20_000, 86_000, 14_000_000)] == [256, 512, 4096]


def test_close_abandons_training_under_way(tmp_path: Path, references: dict) -> None:
    """Closing does not wait for background training to finish: it is abandoned, nothing of
    it is swapped in, and the next start trains again."""
    catalogue = Catalogue()
    started, release = threading.Event(), threading.Event()

    def slow_source(number: int) -> tuple | None:
        if threading.current_thread().name == "segments":
            started.set()
            release.wait(timeout=30)
        return catalogue.source(number)

    index = SegmentedIndex(tmp_path / "index", LAYOUT, {"format": "test"}, slow_source,
                           catalogue.live)
    for number, reference in references.items():
        catalogue.stored[number] = reference
        index.add(number, *reference)
    assert started.wait(timeout=30)
    closing = threading.Thread(target=index.close)
    closing.start()
    while not index._closed:
        time.sleep(0.01)
    release.set()
    closing.join(timeout=30)
    assert not closing.is_alive()
    assert index.factory == "IDMap,Flat"
    reopened = catalogue.open(tmp_path / "index")  # the exact segment closing sealed
    assert self_found(reopened, references) > 0.99
    reopened.wait_idle()  # and the training is due again
    assert reopened.factory.startswith("IVF")
    assert self_found(reopened, references) > 0.9
    reopened.close()
