"""Query clip sets: catalogue clips per (degradation x length) cell, plus negatives.

Two disjoint splits: ``dev`` (seed 1) is for tuning the library, ``eval`` (seed 2) is the
published grid and is never tuned on; they cut from alternate 24 s blocks of every source, so
they never share a second of audio. Within a split, every degradation is applied to the same
(track, offset) draws, so rows differ only by the degradation — a paired comparison.
Clips are cached under ``.cache/benchmarks/clips/<split>/`` by their parameters.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from benchmarks.corpus import CACHE, SPEECH_REEL, Track, probe_duration
from benchmarks.degrade import DEGRADATIONS, degrade

SEEDS = {"dev": 1, "eval": 2}
LENGTHS_S = (3.0, 5.0, 10.0)
TAIL_S = 11.0
"""A 10 s clip at speed 1.1 covers 11 s of its source: the most any clip covers."""
BLOCK_S = 24.0
SPLIT_BLOCK_PARITY = {"dev": 0, "eval": 1}
MIN_LEVEL_DBFS = -45.0
"""Source segments quieter than this are redrawn: a capture of silence identifies nothing."""

QUICK_DEGRADATIONS = ("clean", "mp3_32k", "noise_0db", "speech_0db", "echo", "speed_+5",
                      "tempo_-10", "pitch_+1")
NEGATIVE_DEGRADATIONS = ("clean", "mp3_32k", "noise_5db", "speech_0db", "reverb", "speed_+5",
                         "tempo_-10", "pitch_-1")
"""Non-catalogue music clips cycle through these, so false matches are tested degraded too."""


@dataclass(frozen=True)
class Sizes:
    """How many clips a run draws."""

    per_cell: int
    """catalogue clips per (degradation x length) cell"""
    music_negatives: int
    """non-catalogue music clips per length"""
    speech_negatives: int
    """speech clips per length"""


FULL = Sizes(per_cell=40, music_negatives=80, speech_negatives=25)
QUICK = Sizes(per_cell=8, music_negatives=16, speech_negatives=8)


@dataclass(frozen=True)
class Clip:
    """One query file and its ground truth (``track`` is empty for speech)."""

    path: str
    role: str
    track: str
    source: str
    degradation: str
    length_s: float
    reference_start_s: float
    speed: float


def _seed(*parts: object) -> int:
    """Seed from parameters, so a clip is the same whatever order the pool generates it in."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


def _level_dbfs(path: Path, start_s: float, length_s: float) -> float:
    pcm = subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-ss", f"{start_s:.4f}", "-t",
         f"{length_s:.4f}", "-i", str(path), "-ac", "1", "-ar", "8000", "-f", "f32le", "-"],
        capture_output=True, check=True).stdout
    samples = np.frombuffer(pcm, dtype=np.float32).astype(np.float64)
    return 10.0 * np.log10(np.mean(samples**2) + 1e-20) if samples.size else -200.0


def _draw(rng: np.random.Generator, split: str, sources: list[tuple[str, Path, float]],
          length_s: float, count: int, tail_s: float = TAIL_S) -> list[tuple[str, Path, float]]:
    """``count`` (key, file, start) draws: a source uniformly, then one of the split's blocks of
    it uniformly, then a start uniformly in the block, redrawn while the segment is near-silent.

    Blocks alternate between the splits (dev even, eval odd) and a clip never leaves its block,
    so no eval clip overlaps a dev clip in the reference (``tail_s``: the most of its source a
    clip of this length may cover, from its start).
    """
    parity = SPLIT_BLOCK_PARITY[split]
    eligible = [(key, file, duration) for key, file, duration in sources
                if duration >= (parity + 1) * BLOCK_S]
    draws: list[tuple[str, Path, float]] = []
    while len(draws) < count:
        key, file, duration = eligible[rng.integers(len(eligible))]
        block = parity + 2 * int(rng.integers((int(duration // BLOCK_S) - parity + 1) // 2))
        start = round(float(rng.uniform(block * BLOCK_S, (block + 1) * BLOCK_S - tail_s)), 3)
        if _level_dbfs(file, start, length_s) >= MIN_LEVEL_DBFS:
            draws.append((key, file, start))
    return draws


def _clip(split: str, role: str, key: str, file: Path, start: float, length: float,
          degradation: str) -> Clip:
    spec = DEGRADATIONS[degradation]
    name = f"{key.replace(':', '__').rsplit('.', 1)[0]}@{start:09.3f}.{spec.ext}"
    path = (CACHE / "clips" / split / role / f"{degradation}-{spec.digest}" / f"{length:g}s"
            / name)
    return Clip(str(path), role, key if role != "speech" else "", str(file), degradation, length,
                start, spec.speed)


def plan(split: str, quick: bool, tracks: list[Track], catalogue: list[Track]) -> list[Clip]:
    """Every clip of a run, deterministic for (split, mode, manifest, parameters).

    Drawing checks each segment's level with ffmpeg, so the plan is cached next to the clips as
    ``<mode>_truth.json`` — also the ground truth to tune against (dev) or audit (eval).
    """
    sizes = QUICK if quick else FULL
    degradations = QUICK_DEGRADATIONS if quick else tuple(DEGRADATIONS)
    negatives = [t for t in tracks if t.role == "non_catalogue"]
    reel_s = probe_duration(SPEECH_REEL)
    key = hashlib.sha256(repr((
        SEEDS[split], sizes, LENGTHS_S, TAIL_S, BLOCK_S, SPLIT_BLOCK_PARITY[split], MIN_LEVEL_DBFS,
        NEGATIVE_DEGRADATIONS,
        [(d, DEGRADATIONS[d].digest) for d in degradations],
        [t.sha256 for t in catalogue], [t.sha256 for t in negatives], reel_s)).encode()).hexdigest()
    truth = CACHE / "clips" / split / f"{'quick' if quick else 'full'}_truth.json"
    if truth.exists() and (cached := json.loads(truth.read_text()))["key"] == key:
        return [Clip(**c) for c in cached["clips"]]

    rng = np.random.default_rng(SEEDS[split])
    speech_source = [("speech", SPEECH_REEL, reel_s)]
    clips: list[Clip] = []
    for length in LENGTHS_S:
        sources = [(t.key, t.file, t.duration_s) for t in catalogue]
        for key_, file, start in _draw(rng, split, sources, length, sizes.per_cell):
            clips += [_clip(split, "catalogue", key_, file, start, length, d) for d in degradations]
        sources = [(t.key, t.file, t.duration_s) for t in negatives]
        draws = _draw(rng, split, sources, length, sizes.music_negatives)
        clips += [_clip(split, "non_catalogue", key_, file, start, length,
                        NEGATIVE_DEGRADATIONS[i % len(NEGATIVE_DEGRADATIONS)])
                  for i, (key_, file, start) in enumerate(draws)]
        clips += [_clip(split, "speech", key_, file, start, length, "clean")
                  for key_, file, start in _draw(rng, split, speech_source, length,
                                                 sizes.speech_negatives)]
    truth.parent.mkdir(parents=True, exist_ok=True)
    truth.write_text(json.dumps({"key": key, "clips": [asdict(c) for c in clips]}, indent=0) + "\n")
    return clips


def plan_curve(split: str, catalogue: list[Track], degradations: tuple[str, ...],
               lengths: tuple[float, ...], per_cell: int) -> list[Clip]:
    """Catalogue clips for a clip-length curve: per length, ``per_cell`` draws (seeded apart
    from ``plan``'s), each cut for every degradation. Lengths may exceed the grid's: a clip
    still stays inside its split's block, covering at most 1.1 x its length."""
    rng = np.random.default_rng(SEEDS[split] + 1000)
    sources = [(t.key, t.file, t.duration_s) for t in catalogue]
    return [_clip(split, "catalogue", key, file, start, length, d)
            for length in lengths
            for key, file, start in _draw(rng, split, sources, length, per_cell,
                                          max(TAIL_S, 1.1 * length))
            for d in degradations]


def _generate(clip: Clip) -> None:
    degrade(Path(clip.source), clip.reference_start_s, clip.length_s, clip.degradation,
            Path(clip.path), np.random.default_rng(_seed(clip.path)))


def materialise(clips: list[Clip]) -> None:
    """Write the clips not cached yet, in parallel (timings are taken later, on their own)."""
    missing = [c for c in clips if not Path(c.path).exists()]
    if missing:
        with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
            list(tqdm(pool.map(_generate, missing, chunksize=4), total=len(missing),
                      desc="generating clips", unit="clip"))
