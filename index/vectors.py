"""FAISS index over window descriptors, configured by a factory string and a search-parameter
string (FAISS's ParameterSpace syntax, e.g. ``"nprobe=32"``).

A vector's 64-bit id packs the reference's internal number and the window's slot on the
reference hop grid, so a hit decodes to (reference, time) with no lookup, and a whole
reference is removed with one id range.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import faiss
import numpy as np

SLOT_BITS = 24  # 2**24 windows of 0.25 s: references up to 1,165 h each
EXACT_FACTORY = "IDMap,Flat"
"""Used until the catalogue holds enough windows to train the quantiser."""


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


def new_index(dim: int, factory: str, training: np.ndarray | None = None) -> faiss.Index:
    """An empty inner-product index built from ``factory``, trained on ``training`` when the
    index type needs it (PQ, IVF)."""
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        if training is None:
            raise ValueError(f"index {factory!r} needs training vectors")
        index.train(np.ascontiguousarray(training, dtype=np.float32))
    return index


def needs_training(factory: str, dim: int) -> bool:
    return not faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT).is_trained


class VectorIndex:
    """Thread-safe add / remove / search over one FAISS index."""

    def __init__(self, dim: int, factory: str,
                 index: faiss.Index | None = None, training: np.ndarray | None = None,
                 trained_on: int = 0, search_params: str = "") -> None:
        self.dim = dim
        self.factory = factory
        self.trained_on = trained_on
        self._index = index if index is not None else new_index(dim, factory, training)
        if search_params:
            faiss.ParameterSpace().set_index_parameters(self._index, search_params)
        self._lock = ReadWriteLock()

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    def add(self, number: int, vectors: np.ndarray, slots: np.ndarray) -> None:
        if len(vectors) == 0:
            return
        ids = (np.int64(number) << SLOT_BITS) | slots.astype(np.int64)
        with self._lock.write():
            self._index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)

    def remove(self, number: int) -> int:
        selector = faiss.IDSelectorRange(number << SLOT_BITS, (number + 1) << SLOT_BITS)
        with self._lock.write():
            return int(self._index.remove_ids(selector))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top-``k`` neighbours: (similarities, reference numbers, slots); missing = -1."""
        with self._lock.read():
            sims, ids = self._index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        valid = ids >= 0
        numbers = np.where(valid, ids >> SLOT_BITS, -1)
        slots = np.where(valid, ids & ((1 << SLOT_BITS) - 1), -1)
        return sims, numbers, slots

    def save(self, path: Path) -> None:
        """Write atomically: a crash leaves the old file or the new one, never half of one."""
        tmp = path.with_suffix(".tmp")
        with self._lock.read():
            faiss.write_index(self._index, str(tmp))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path, dim: int, factory: str, trained_on: int,
             search_params: str = "") -> VectorIndex:
        index = faiss.read_index(str(path))
        if index.d != dim:
            raise ValueError(f"{path} holds {index.d}-d vectors, expected {dim}")
        return cls(dim, factory, index, trained_on=trained_on, search_params=search_params)
