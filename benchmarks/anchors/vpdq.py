"""vPDQ (Meta's video PDQ, ``vpdq`` from PyPI, compiled against Debian's FFmpeg development
packages by ``benchmarks/setup.sh anchors``) as a video anchor, with its own bag-of-frames
matching: one PDQ hash per second of video, and a reference matches a clip by the share of the
clip's frames that have a frame of the reference within vPDQ's distance anywhere in it
(``matchTwoHashBrute`` in Meta's code).

vPDQ compares sets of frames, not sequences: it names a reference and says nothing of where in
it the clip lies, so its answers carry no offset and are judged on the title alone."""

from __future__ import annotations

import math

import numpy as np

from benchmarks.anchors import Answer, Worker, environment, hamming
from benchmarks.corpus import MediaFile

DISTANCE_TOLERANCE = 31
"""vPDQ's default: frames match when their distance is below this."""
QUALITY_TOLERANCE = 50
"""vPDQ's default: frames of lower quality are not compared."""
SECONDS_PER_HASH = 1.0
"""vPDQ's default sampling."""
ANSWERS = 5
HASHER = """
import json, sys, vpdq
seconds_per_hash = float(sys.argv[1])
for line in sys.stdin:
    features = vpdq.computeHash(line.rstrip("\\n"), seconds_per_hash=seconds_per_hash,
                                thread_count=1)
    print(json.dumps([[f.hex, f.quality] for f in features]), flush=True)
"""


class Vpdq:
    name = "vpdq"
    label = "vPDQ (title only)"
    reports_offsets = False

    def __init__(self) -> None:
        self.hasher = Worker(environment(("vpdq",)), HASHER, f"{SECONDS_PER_HASH:g}")
        self.keys: list[str] = []
        self.hashes = np.zeros((0, 32), np.uint8)
        self.owner = np.zeros(0, np.int64)

    def _features(self, path: str) -> np.ndarray:
        """Packed hashes [n, 32] of the sampled frames vPDQ rates good enough."""
        rows = [bytes.fromhex(h) for h, quality in self.hasher.ask(path)
                if quality >= QUALITY_TOLERANCE]
        return np.frombuffer(b"".join(rows), np.uint8).reshape(-1, 32)

    def ingest(self, videos: list[MediaFile]) -> None:
        parts = [self._features(str(v.file)) for v in videos]
        self.keys = [v.key for v in videos]
        self.hashes = np.concatenate(parts)
        self.owner = np.repeat(np.arange(len(parts)), [len(p) for p in parts])

    def index_bytes(self) -> int:
        return self.hashes.nbytes

    def match(self, path: str) -> list[Answer]:
        """Every reference with a matching frame, scored by vPDQ's query match percentage
        (share of the clip's frames found in the reference), ties broken by the share of
        the reference's frames found in the clip."""
        query = self._features(path)
        if len(query) == 0 or len(self.hashes) == 0:
            return []
        close = hamming(query, self.hashes) < DISTANCE_TOLERANCE
        references = np.unique(self.owner[close.any(axis=0)])
        sizes = np.bincount(self.owner, minlength=len(self.keys))
        scored = []
        for reference in references:
            mine = close[:, self.owner == reference]
            query_pct = 100.0 * mine.any(axis=1).mean()
            target_pct = 100.0 * mine.any(axis=0).sum() / sizes[reference]
            scored.append((query_pct, target_pct, int(reference)))
        scored.sort(reverse=True)
        return [Answer(self.keys[r], q + t / 1000.0, 0.0, math.nan)
                for q, t, r in scored[:ANSWERS]]
