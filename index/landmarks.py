"""Landmarks: triplets of spectral peaks as exact hash keys, in a table searched by key.

Why: a clip under speech or noise at 0 dB is described by windows only about 0.5 alike to
the true reference's, and at 1,000 h the inverted file does not route such a window to the
list holding its true neighbour (its list ranked 200-600 of 4,096 for the dev clips lost
there; 16 are scanned). Its spectral peaks do survive, exact to a frame and a band, so a
key made of a few of them is found exactly whatever else the catalogue holds: Wang's
landmarks. A triplet (an anchor peak and two of the peaks after it, within ``ZONE_FRAMES``
and ``ZONE_BANDS``) packs anchor band, both band steps and both time steps into 32 bits.
A pair's key was too common: at 1,000 h a 10 s clip's pair keys met 1.3 million entries,
its triplet keys 17,000 (dev clips), for the true line's share falling from 15 to 5 median.

A reference stores one triplet per peak, its first two successors (0.1 MB per hour at 30
peaks per second; 8 bytes each with its place). A query forms every pair among each peak's
first ``QUERY_SUCCESSORS``: speech or noise adds peaks between the two the reference kept.
Each key found votes for (reference, reference frame at query frame 0); ``strongest``
turns the votes into alignments.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

ZONE_FRAMES = 63
"""A successor is at most this many frames (2 s) after its anchor (6 bits)..."""
ZONE_BANDS = 31
"""...and at most this many bands (10 1/3 semitones) above or below it (6 bits)."""
REFERENCE_SUCCESSORS = 2
QUERY_SUCCESSORS = 4
FORMAT = "triplets-v1"
_MAX_TIMELINE = 2**32
"""Entries hold a frame of the table's timeline in 32 bits: 38,000 h of audio per table."""


def landmarks(frames: np.ndarray, bands: np.ndarray, successors: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """Triplet keys (uint32) and anchor frames (int64) of peaks (sorted by frame): each peak
    with every pair among its first ``successors`` successors inside the zone (a successor
    is later by 1 to ``ZONE_FRAMES`` frames and within ``ZONE_BANDS`` bands). In key order:
    looked up in that order, a table's binary searches walk it forwards (measured on 10 s
    dev clips against 1,000 h: 4.5 instead of 12.9 ms per clip)."""
    if successors < 2:
        raise ValueError(f"a triplet needs 2 successors, got {successors}")
    frames = np.asarray(frames, np.int64)
    bands = np.asarray(bands, np.int64)
    n = len(frames)
    chosen = np.full((n, successors), -1, np.int64)
    taken = np.zeros(n, np.int64)
    for step in range(1, n):
        anchor = np.arange(n - step)
        later = frames[anchor + step] - frames[anchor]
        open_ = (later <= ZONE_FRAMES) & (taken[anchor] < successors)
        if not open_.any():
            break
        fits = open_ & (later >= 1) & (np.abs(bands[anchor + step] - bands[anchor]) <= ZONE_BANDS)
        anchor = anchor[fits]
        chosen[anchor, taken[anchor]] = anchor + step
        taken[anchor] += 1
    key_parts, anchor_parts = [], []
    for first, second in itertools.combinations(range(successors), 2):
        anchor = np.nonzero(chosen[:, second] >= 0)[0]
        j, k = chosen[anchor, first], chosen[anchor, second]
        key_parts.append((bands[anchor] << 24) | ((bands[j] - bands[anchor] + 32) << 18)
                         | ((bands[k] - bands[anchor] + 32) << 12)
                         | ((frames[j] - frames[anchor]) << 6) | (frames[k] - frames[anchor]))
        anchor_parts.append(frames[anchor])
    keys = np.concatenate(key_parts).astype(np.uint32)
    order = np.argsort(keys, kind="stable")
    return keys[order], np.concatenate(anchor_parts)[order]


class Table:
    """Immutable: sorted keys, each with its place, a uint32 frame of the table's timeline
    on which reference ``numbers[i]`` starts at ``starts[i]`` (``end`` frames in all)."""

    def __init__(self, keys: np.ndarray, places: np.ndarray, numbers: np.ndarray,
                 starts: np.ndarray, end: int) -> None:
        self.keys, self.places, self.numbers, self.starts, self.end = (
            keys, places, numbers, starts, end)

    @classmethod
    def of(cls, number: int, keys: np.ndarray, anchors: np.ndarray) -> Table:
        """One reference's table, from its landmarks."""
        order = np.argsort(keys, kind="stable")
        return cls(keys[order], anchors[order].astype(np.uint32), np.array([number], np.int64),
                   np.zeros(1, np.int64), int(anchors.max(initial=0)) + 1)

    @classmethod
    def join(cls, tables: list[Table]) -> Table:
        """One table holding all of ``tables``, their timelines laid end to end. Each is
        sorted already, so the stable sort only merges runs."""
        shifts = np.cumsum([0] + [t.end for t in tables])
        if shifts[-1] >= _MAX_TIMELINE:
            raise ValueError(f"{shifts[-1]} frames are more than one landmark table can place")
        keys = np.concatenate([t.keys for t in tables] or [np.zeros(0, np.uint32)])
        places = np.concatenate([t.places + np.uint32(shift) for t, shift
                                 in zip(tables, shifts[:-1], strict=True)]
                                or [np.zeros(0, np.uint32)])
        order = np.argsort(keys, kind="stable")
        return cls(keys[order], places[order],
                   np.concatenate([t.numbers for t in tables] or [np.zeros(0, np.int64)]),
                   np.concatenate([t.starts + shift for t, shift
                                   in zip(tables, shifts[:-1], strict=True)]
                                  or [np.zeros(0, np.int64)]), int(shifts[-1]))

    def without(self, number: int) -> Table:
        """The table less one reference's entries (its stretch of timeline left empty)."""
        at = int(np.nonzero(self.numbers == number)[0][0])
        owner = np.searchsorted(self.starts, self.places, side="right") - 1
        keep = owner != at
        return Table(self.keys[keep], self.places[keep], np.delete(self.numbers, at),
                     np.delete(self.starts, at), self.end)

    def lookup(self, keys: np.ndarray, anchors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every entry under one of the query's ``keys``: (reference number, reference frame
        at query frame 0), where ``anchors`` are the query frames of the keys."""
        low = np.searchsorted(self.keys, keys)
        counts = np.searchsorted(self.keys, keys, side="right") - low
        total = int(counts.sum())
        rows = np.repeat(low - np.cumsum(counts) + counts, counts) + np.arange(total)
        places = self.places[rows].astype(np.int64)
        owner = np.searchsorted(self.starts, places, side="right") - 1
        return (self.numbers[owner],
                places - self.starts[owner] - np.repeat(np.asarray(anchors, np.int64), counts))

    def __len__(self) -> int:
        return len(self.keys)


class Landmarks:
    """The landmark table of one index segment. Sealed segments hold one ``Table``; the fresh
    one adds each reference as a small table and joins the last two while the older is at
    most twice the newer, so a search looks up a few tables and adding costs O(log n) per
    entry (re-sorting everything per reference would cost O(n))."""

    SUFFIX = ".landmarks"

    def __init__(self, tables: list[Table] | None = None) -> None:
        self._tables = tables or []

    def add(self, number: int, peaks: tuple[np.ndarray, np.ndarray]) -> None:
        """Add a reference's landmarks from its peaks (frames, bands)."""
        self._tables.append(Table.of(number, *landmarks(*peaks, REFERENCE_SUCCESSORS)))
        while len(self._tables) > 1 and len(self._tables[-2]) <= 2 * len(self._tables[-1]):
            newer = self._tables.pop()
            self._tables[-1] = Table.join([self._tables[-1], newer])

    def remove(self, number: int) -> None:
        self._tables = [t.without(number) if number in t.numbers else t for t in self._tables]

    def lookup(self, keys: np.ndarray, anchors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        found = [table.lookup(keys, anchors) for table in self._tables]
        if not found:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return (np.concatenate([f[0] for f in found]), np.concatenate([f[1] for f in found]))

    def write(self, path: Path) -> None:
        table = Table.join(self._tables)
        with open(path, "wb") as handle:
            np.savez(handle, keys=table.keys, places=table.places, numbers=table.numbers,
                     starts=table.starts, end=np.int64(table.end))

    @classmethod
    def read(cls, path: Path) -> Landmarks:
        with np.load(path) as data:
            return cls([Table(data["keys"], data["places"], data["numbers"], data["starts"],
                              int(data["end"]))])

    @property
    def nbytes(self) -> int:
        return sum(t.keys.nbytes + t.places.nbytes for t in self._tables)


def strongest(numbers: np.ndarray, offsets: np.ndarray, tolerance: int, count: int
              ) -> list[tuple[int, int, int]]:
    """The ``count`` (reference number, offset, votes) with most votes, votes summed within
    ``tolerance`` frames of the offset, strongest first; one per line (a nudge of the same
    line is not another)."""
    if len(numbers) == 0:
        return []
    packed = (numbers.astype(np.int64) << 32) + offsets + (1 << 31)
    cells, votes = np.unique(packed, return_counts=True)
    running = np.concatenate(([0], np.cumsum(votes)))
    near = (running[np.searchsorted(cells, cells + tolerance, side="right")]
            - running[np.searchsorted(cells, cells - tolerance)])
    found: list[tuple[int, int]] = []
    for at in np.argsort(-near, kind="stable"):
        cell = int(cells[at])
        if all(abs(cell - taken) > 2 * tolerance for taken, _ in found):
            found.append((cell, int(near[at])))
            if len(found) == count:
                break
    return [(cell >> 32, (cell & 0xFFFFFFFF) - (1 << 31), n) for cell, n in found]
