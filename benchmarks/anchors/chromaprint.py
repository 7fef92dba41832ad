"""Chromaprint (AcoustID's fingerprint) as an anchor: Debian's ``fpcalc`` gives the raw 32-bit
items of every track and clip, and a sliding Hamming search finds each clip's best offset in
every reference (AcoustID's own service matches whole files, not fragments, so the offset
search is ours, as research/audio.md's smoke test did)."""

from __future__ import annotations

import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks.anchors import AnchorUnavailable, Answer
from benchmarks.corpus import Track, fetch_package

ITEM_S = 4096 / 3 / 11025
"""One item per third of a 4096-sample frame at 11,025 Hz: 0.124 s."""
ANSWERS = 5


def install() -> tuple[Path, dict[str, str]]:
    """fpcalc from Debian (libchromaprint-tools and its library), unpacked, not installed:
    it links against the FFmpeg libraries that ``benchmarks/setup.sh`` installs."""
    tool = fetch_package("libchromaprint-tools") / "usr" / "bin" / "fpcalc"
    library = fetch_package("libchromaprint1") / "usr" / "lib" / "x86_64-linux-gnu"
    if not tool.exists():
        raise AnchorUnavailable(f"fpcalc missing from the unpacked package at {tool}")
    return tool, {**os.environ, "LD_LIBRARY_PATH": str(library)}


def fpcalc(tool: Path, env: dict[str, str], path: str) -> np.ndarray:
    """Raw fingerprint items of a whole file. fpcalc 1.5 exits with 3 ("Error decoding audio
    frame (End of file)") on files it fingerprinted fully, so its output decides, not its code."""
    done = subprocess.run([str(tool), "-raw", "-json", "-length", "100000", path],
                          capture_output=True, text=True, env=env)
    if "Empty fingerprint" in done.stderr:  # under ~3 s of audio: nothing to search with
        return np.zeros(0, dtype=np.uint32)
    try:
        items = json.loads(done.stdout)["fingerprint"]
    except (ValueError, KeyError) as exc:
        raise RuntimeError(f"fpcalc failed on {path}: {done.stderr.strip()}") from exc
    return np.asarray(items, dtype=np.uint32)


class Chromaprint:
    name = "chromaprint"
    label = "Chromaprint (fpcalc 1.5.1 + offset search)"

    def __init__(self) -> None:
        self.tool, self.env = install()
        self.keys: list[str] = []
        self.items = np.zeros(0, np.uint32)
        self.owner = np.zeros(0, np.int64)
        self.first = np.zeros(0, np.int64)

    def ingest(self, tracks: list[Track]) -> None:
        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            prints = list(pool.map(lambda t: fpcalc(self.tool, self.env, str(t.file)), tracks))
        self.keys = [t.key for t in tracks]
        self.items = np.concatenate(prints)
        self.owner = np.repeat(np.arange(len(prints)), [len(p) for p in prints])
        self.first = np.concatenate([[0], np.cumsum([len(p) for p in prints])[:-1]])

    def index_bytes(self) -> int:
        return self.items.nbytes

    def match(self, path: str) -> list[Answer]:
        return self._search(fpcalc(self.tool, self.env, path))

    def _search(self, query: np.ndarray) -> list[Answer]:
        """1 - bit error rate at every offset where the clip lies inside one reference; the
        best offset per reference, best references first."""
        n, total = len(query), len(self.items)
        if n == 0 or total < n:
            return []
        count = total - n + 1
        errors = np.zeros(count, np.int64)
        for i, item in enumerate(query):
            errors += np.bitwise_count(self.items[i:i + count] ^ item)
        reference = self.owner[:count]
        valid = reference == self.owner[n - 1:]
        score = np.where(valid, 1.0 - errors / (32.0 * n), -1.0)
        answers = []
        for r in np.unique(reference[valid]):
            mine = np.flatnonzero(valid & (reference == r))
            best = mine[np.argmax(score[mine])]
            offset_s = float(best - self.first[r]) * ITEM_S
            answers.append(Answer(self.keys[r], float(score[best]), 0.0, offset_s))
        return sorted(answers, key=lambda a: -a.score)[:ANSWERS]
