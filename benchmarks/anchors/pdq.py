"""PDQ (Meta's 256-bit perceptual image hash, ``pdqhash`` from PyPI) per frame as a video
anchor: frames sampled at clipmatch's rate, and a plain vote over (reference, offset) of the
frames whose hashes are within PDQ's match distance. No speed hypotheses, no flips, no crops:
the matcher a PDQ user writes, as the issue asks."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

from benchmarks.anchors import Answer, environment, run_tool
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
import sys, numpy as np, pdqhash
width, height = int(sys.argv[1]), int(sys.argv[2])
raw = sys.stdin.buffer.read()
frames = np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)
out = []
for frame in frames:
    bits, quality = pdqhash.compute(np.ascontiguousarray(frame))
    out.append(np.concatenate([np.packbits(bits.astype(np.uint8)), [min(quality, 255)]]))
sys.stdout.buffer.write(np.asarray(out, np.uint8).tobytes())
"""


def frames_hashed(python: Path, path: str) -> tuple[np.ndarray, np.ndarray]:
    """(packed hashes [n, 32] uint8, frame times) of the frames PDQ rates good enough."""
    probe = run_tool(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                      "stream=width,height", "-of", "csv=p=0", path]).stdout.split(",")
    width, height = int(probe[0]), int(probe[1].split()[0])
    out_h = max(2, round(height * WIDTH / width / 2) * 2)
    raw = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", path, "-an", "-vf",
                          f"fps={VIDEO_FRAME_RATE:g},scale={WIDTH}:{out_h}", "-f", "rawvideo",
                          "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
    hashed = subprocess.run([str(python), "-c", HASHER, str(WIDTH), str(out_h)], input=raw,
                            capture_output=True, check=True).stdout
    rows = np.frombuffer(hashed, np.uint8).reshape(-1, 33)
    times = np.arange(len(rows)) / VIDEO_FRAME_RATE
    good = rows[:, 32] >= MIN_QUALITY
    return rows[good, :32], times[good]


class Pdq:
    name = "pdq"
    label = "PDQ per frame + offset vote"

    def __init__(self) -> None:
        self.python = environment(("numpy", "pdqhash"))
        self.keys: list[str] = []
        self.hashes = np.zeros((0, 32), np.uint8)
        self.owner = np.zeros(0, np.int64)
        self.times = np.zeros(0)

    def ingest(self, videos: list[MediaFile]) -> None:
        parts = [frames_hashed(self.python, str(v.file)) for v in videos]
        self.keys = [v.key for v in videos]
        self.hashes = np.concatenate([h for h, _ in parts])
        self.times = np.concatenate([t for _, t in parts])
        self.owner = np.repeat(np.arange(len(parts)), [len(t) for _, t in parts])

    def index_bytes(self) -> int:
        return self.hashes.nbytes

    def match(self, paths: list[str]) -> dict[str, list[Answer]]:
        return {path: self._search(*frames_hashed(self.python, path)) for path in paths}

    def _search(self, hashes: np.ndarray, times: np.ndarray) -> list[Answer]:
        """Votes of every (query frame, reference frame) pair within MATCH_DISTANCE for the
        reference and offset bin they imply; the fullest bin per reference answers."""
        if len(hashes) == 0 or len(self.hashes) == 0:
            return []
        distance = np.bitwise_count(hashes[:, None, :] ^ self.hashes[None, :, :]).sum(axis=2)
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
