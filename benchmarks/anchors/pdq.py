"""PDQ (Meta's 256-bit perceptual image hash, ``pdqhash`` from PyPI) per frame as a video
anchor: frames sampled at clipmatch's rate, and a plain vote over (reference, offset) of the
frames whose hashes are within PDQ's match distance. No speed hypotheses, no flips, no crops:
the matcher a PDQ user writes, as the issue asks."""

from __future__ import annotations

import numpy as np

from benchmarks.anchors import Answer, Worker, environment, hamming
from benchmarks.corpus import MediaFile
from fingerprint.decode import VIDEO_FRAME_RATE

MATCH_DISTANCE = 31
"""Hamming distance at or below which PDQ calls two frames the same (Meta's guidance)."""
MIN_QUALITY = 50
"""Frames PDQ rates below this (flat, dark) are dropped, as Meta's tools do."""
OFFSET_BIN_S = 0.25
WIDTH = 256
ANSWERS = 5
HASHER = """
import json, subprocess, sys
import numpy as np, pdqhash
rate, width = float(sys.argv[1]), int(sys.argv[2])
for line in sys.stdin:
    path = line.rstrip("\\n")
    size = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                           "stream=width,height", "-of", "csv=p=0", path], capture_output=True,
                          text=True, check=True).stdout.split(",")
    height = max(2, round(int(size[1].split()[0]) * width / int(size[0]) / 2) * 2)
    raw = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", path, "-an", "-vf",
                          f"fps={rate:g},scale={width}:{height}", "-f", "rawvideo", "-pix_fmt",
                          "rgb24", "-"], capture_output=True, check=True).stdout
    hashes, quality = [], []
    for frame in np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3):
        bits, q = pdqhash.compute(np.ascontiguousarray(frame))
        hashes.append(np.packbits(bits.astype(np.uint8)))
        quality.append(int(q))
    print(json.dumps({"hashes": np.asarray(hashes, np.uint8).tobytes().hex(),
                      "quality": quality}), flush=True)
"""


def frames_hashed(hasher: Worker, path: str) -> tuple[np.ndarray, np.ndarray]:
    """(packed hashes [n, 32] uint8, frame times) of the frames PDQ rates good enough."""
    reply = hasher.ask(path)
    rows = np.frombuffer(bytes.fromhex(reply["hashes"]), np.uint8).reshape(-1, 32)
    quality = np.asarray(reply["quality"], np.int64)
    times = np.arange(len(rows)) / VIDEO_FRAME_RATE
    good = quality >= MIN_QUALITY
    return rows[good], times[good]


class Pdq:
    name = "pdq"
    label = "PDQ per frame + offset vote"

    def __init__(self) -> None:
        self.hasher = Worker(environment(("numpy", "pdqhash")), HASHER,
                             f"{VIDEO_FRAME_RATE:g}", str(WIDTH))
        self.keys: list[str] = []
        self.hashes = np.zeros((0, 32), np.uint8)
        self.owner = np.zeros(0, np.int64)
        self.times = np.zeros(0)

    def ingest(self, videos: list[MediaFile]) -> None:
        parts = [frames_hashed(self.hasher, str(v.file)) for v in videos]
        self.keys = [v.key for v in videos]
        self.hashes = np.concatenate([h for h, _ in parts])
        self.times = np.concatenate([t for _, t in parts])
        self.owner = np.repeat(np.arange(len(parts)), [len(t) for _, t in parts])

    def index_bytes(self) -> int:
        return self.hashes.nbytes

    def match(self, path: str) -> list[Answer]:
        return self._search(*frames_hashed(self.hasher, path))

    def _search(self, hashes: np.ndarray, times: np.ndarray) -> list[Answer]:
        """Votes of every (query frame, reference frame) pair within MATCH_DISTANCE for the
        reference and offset bin they imply; the fullest bin per reference answers."""
        if len(hashes) == 0 or len(self.hashes) == 0:
            return []
        distance = hamming(hashes, self.hashes)
        q, r = np.nonzero(distance <= MATCH_DISTANCE)
        if len(q) == 0:
            return []
        offsets = self.times[r] - times[q]
        bins = np.round(offsets / OFFSET_BIN_S).astype(np.int64)
        keys = self.owner[r] * (1 << 32) + (bins + (1 << 31))
        unique, counts = np.unique(keys, return_counts=True)
        best: dict[int, tuple[int, float]] = {}
        for key, count in zip(unique, counts, strict=True):
            reference = int(key >> 32)
            if count > best.get(reference, (0, 0.0))[0]:
                best[reference] = (int(count), ((int(key) & 0xFFFFFFFF) - (1 << 31))
                                   * OFFSET_BIN_S)
        answers = [Answer(self.keys[ref], float(n), 0.0, max(0.0, offset))
                   for ref, (n, offset) in best.items()]
        return sorted(answers, key=lambda a: -a.score)[:ANSWERS]
