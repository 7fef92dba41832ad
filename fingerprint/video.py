"""Video fingerprint: grey frames at a fixed rate, and one descriptor per frame for FAISS.

Stage 1, ``VideoFrames``: grey frames ``VIDEO_WIDTH`` pixels across at ``VIDEO_FRAME_RATE``,
as ``fingerprint.decode.decode_media`` gives them. It is what a crawler computes and sends.

Stage 2, ``descriptors``: per frame, the picture inside a region (by default the frame inside
its black borders) is shrunk to 32 x 32, each grey level replaced by its rank among the
frame's pixels, and projected onto the 8 x 8 lowest 2-D DCT terms without the constant one:
63 floats, L2-normalised, compared by inner product. Ranks do not change under gamma,
contrast or brightness changes (they keep the order of grey levels); low DCT orders ignore
re-encoding noise, blur, small logos and a line of subtitles.

Query-side hypotheses, so that nothing extra is stored per reference:
- a mirrored picture is the same descriptor with the odd horizontal orders negated (exact for
  a DCT), so flips cost no extra pixels;
- picture-in-picture (the reference shown small over other video) is found as the rectangle
  whose straight edges persist through the clip while the picture inside changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from fingerprint.decode import MAX_VIDEO_HEIGHT, VIDEO_FRAME_RATE, VIDEO_WIDTH

FORMAT = "grey128-v1"
THUMB = 32
ORDERS = 8
DIM = ORDERS * ORDERS - 1

MIN_ENTROPY_BITS = 2.0
"""Frames whose 64-level grey histogram holds less information than this (black, fades,
flat title cards with a line of text) carry no fingerprint: they look alike in every film.
Dim but textured scenes measure 3 bits and more."""
BORDER_LEVEL = 40
"""Rows and columns at the frame's edge this dark and this flat ..."""
BORDER_FLATNESS = 6.0
"""... (standard deviation in grey levels, over all frames) are black borders."""
MAX_BORDER = 0.35
"""Borders never take more than this share of the frame on one side."""

REFERENCE_CROP = 0.05
"""Each reference frame is also described without this share of every side (a 10 % crop)."""

INSET_MIN = 0.25
"""An inset picture covers at least this share of the frame's width and height ..."""
INSET_MAX = 0.8
"""... and at most this share (bigger is a crop, which the whole-frame descriptor survives)."""
INSET_ASPECTS = (1.0, 2.5)
"""Width / height of an inset: landscape pictures, 4:3 to wider than cinema scope."""
INSETS = 2
"""Inset-picture candidates tried per query."""


@dataclass(frozen=True)
class VideoFrames:
    """Grey frames (n, height, VIDEO_WIDTH) uint8 and their times (s); what a crawler sends."""

    pixels: np.ndarray
    times: np.ndarray
    format: str = FORMAT

    def __post_init__(self) -> None:
        if self.format != FORMAT:
            raise ValueError(f"video fingerprint format {self.format!r} is not {FORMAT!r}")
        if self.pixels.dtype != np.uint8 or self.pixels.ndim != 3:
            raise ValueError(f"video frames must be uint8 (frames, height, {VIDEO_WIDTH}), got "
                             f"{self.pixels.dtype} {self.pixels.shape}")
        if self.pixels.shape[2] != VIDEO_WIDTH or not 8 <= self.pixels.shape[1] <= MAX_VIDEO_HEIGHT:
            raise ValueError(f"video frames must be {VIDEO_WIDTH} pixels wide and 8 to "
                             f"{MAX_VIDEO_HEIGHT} high, got {self.pixels.shape[1:]}")
        times = np.asarray(self.times, dtype=np.float64)
        if times.shape != (self.pixels.shape[0],) or not np.all(np.isfinite(times)):
            raise ValueError("video frame times must be one finite number per frame")
        if np.any(np.diff(times) <= 0) or (times.size and times[0] < 0):
            raise ValueError("video frame times must start at 0 or later and increase")

    @property
    def duration_s(self) -> float:
        return float(self.times[-1] + 1.0 / VIDEO_FRAME_RATE) if self.times.size else 0.0


@dataclass(frozen=True)
class Region:
    """A query-side hypothesis: which part of the frame shows the reference, mirrored or not.
    ``box`` is (top, bottom, left, right) in pixels of the frames."""

    box: tuple[int, int, int, int]
    mirrored: bool = False


@lru_cache(maxsize=1)
def _dct_basis() -> np.ndarray:
    """Orthonormal DCT-II rows of orders 0..ORDERS-1 over THUMB samples."""
    x = (np.arange(THUMB) + 0.5) / THUMB
    basis = np.cos(np.pi * np.arange(ORDERS)[:, None] * x[None, :])
    return (basis / np.linalg.norm(basis, axis=1, keepdims=True)).astype(np.float32)


@lru_cache(maxsize=1)
def _mirror_signs() -> np.ndarray:
    """Mirroring x -> THUMB-1-x multiplies horizontal order v by (-1)**v."""
    signs = np.tile((-1.0) ** np.arange(ORDERS), ORDERS).astype(np.float32)
    return signs[1:]  # the constant term is not in the descriptor


def content_box(pixels: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) inside the black borders that every frame shares
    (letterbox, pillarbox or both). Dark but textured rows (a night sky) are not borders."""
    if len(pixels) == 0:
        return 0, 0, 0, 0
    height, width = pixels.shape[1:]
    rows, cols = _line_stats(pixels, lambda f: f, (0, 2)), _line_stats(pixels, lambda f: f,
                                                                       (0, 1))
    row_dark = (rows[0] <= BORDER_LEVEL) & (rows[1] <= BORDER_FLATNESS)
    col_dark = (cols[0] <= BORDER_LEVEL) & (cols[1] <= BORDER_FLATNESS)

    def run(dark: np.ndarray) -> int:
        """Length of the dark run at the start of ``dark``, capped at MAX_BORDER."""
        limit = int(MAX_BORDER * dark.size)
        bright = np.flatnonzero(~dark[:limit])
        return int(bright[0]) if bright.size else limit

    return (run(row_dark), height - run(row_dark[::-1]), run(col_dark),
            width - run(col_dark[::-1]))


def inset_boxes(pixels: np.ndarray, within: tuple[int, int, int, int],
                count: int = INSETS) -> list[tuple[int, int, int, int]]:
    """Candidate inset pictures: rectangles of a landscape shape whose four sides are all
    edges that persist across the frames (the border of a picture laid over other video).
    Strongest first."""
    top, bottom, left, right = within
    frames = pixels[:, top:bottom, left:right]
    if len(frames) < 2 or min(frames.shape[1:]) < 16:
        return []
    height, width = frames.shape[1:]
    # Mean edge strength at every position over the clip: a persistent straight edge stays
    # strong along its whole length; moving content averages out.
    vertical = _line_stats(frames, lambda f: np.abs(np.diff(f, axis=2)), (0,))[0]
    horizontal = _line_stats(frames, lambda f: np.abs(np.diff(f, axis=1)), (0,))[0]
    cols, rows = vertical.mean(axis=0), horizontal.mean(axis=1)
    cols -= np.convolve(cols, np.ones(9) / 9, mode="same")
    rows -= np.convolve(rows, np.ones(9) / 9, mode="same")
    level = float(np.median(vertical))
    found = []
    xs, ys = _peaks(cols, 6), _peaks(rows, 6)
    for i, x0 in enumerate(xs):
        for x1 in xs[i + 1:]:
            for j, y0 in enumerate(ys):
                for y1 in ys[j + 1:]:
                    w, h = x1 - x0, y1 - y0
                    if not (INSET_MIN * width <= w <= INSET_MAX * width
                            and INSET_MIN * height <= h <= INSET_MAX * height
                            and INSET_ASPECTS[0] <= w / h <= INSET_ASPECTS[1]):
                        continue
                    sides = (vertical[y0 + 1:y1 + 1, x0].mean(), vertical[y0 + 1:y1 + 1, x1].mean(),
                             horizontal[y0, x0 + 1:x1 + 1].mean(),
                             horizontal[y1, x0 + 1:x1 + 1].mean())
                    found.append((min(sides) - level, (top + y0 + 1, top + y1 + 1,
                                                       left + x0 + 1, left + x1 + 1)))
    found.sort(key=lambda item: -item[0])
    return [box for _, box in found[:count]]


def _line_stats(pixels: np.ndarray, feature: Callable[[np.ndarray], np.ndarray],
                axes: tuple[int, int], chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of ``feature(frames)`` over ``axes``, a chunk of frames at a
    time: a whole film in float would not fit in memory."""
    total = squares = None
    count = 0
    for start in range(0, len(pixels), chunk):
        values = feature(pixels[start:start + chunk].astype(np.float32))
        part, part_sq = values.sum(axis=axes, dtype=np.float64), np.square(
            values, dtype=np.float64).sum(axis=axes)
        total = part if total is None else total + part
        squares = part_sq if squares is None else squares + part_sq
        count += values.size // part.size
    mean = total / count
    return mean, np.sqrt(np.maximum(squares / count - mean**2, 0.0))


def _peaks(profile: np.ndarray, count: int, separation: int = 4) -> list[int]:
    """Positions of the ``count`` highest values, at least ``separation`` apart, in order."""
    profile = profile.copy()
    positions = []
    for _ in range(min(count, profile.size)):
        best = int(np.argmax(profile))
        positions.append(best)
        profile[max(0, best - separation):best + separation + 1] = -np.inf
    return sorted(positions)


def reference_regions(frames: VideoFrames) -> list[Region]:
    """The whole picture inside its borders, and its centre without REFERENCE_CROP of each
    side: a cropped copy matches that view at its own instant, rather than a moment of a
    slow zoom that happens to frame the picture the same way."""
    top, bottom, left, right = content_box(frames.pixels)
    dy, dx = round((bottom - top) * REFERENCE_CROP), round((right - left) * REFERENCE_CROP)
    return [Region((top, bottom, left, right)),
            Region((top + dy, bottom - dy, left + dx, right - dx))]


def query_regions(frames: VideoFrames) -> list[Region]:
    """Hypotheses for a query: the picture inside its borders, the same mirrored, and the
    likeliest inset pictures."""
    box = content_box(frames.pixels)
    return [Region(box), Region(box, mirrored=True),
            *(Region(inset) for inset in inset_boxes(frames.pixels, box))]


def descriptors(frames: VideoFrames, regions: list[Region]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One descriptor per (region, informative frame).

    Returns (vectors float32 [n, DIM], frame times (s), region index).
    """
    if not regions:
        raise ValueError("at least one region is needed")
    parts = [_region_descriptors(frames, region) for region in regions]
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            np.concatenate([np.full(len(p[1]), i, np.int64) for i, p in enumerate(parts)]))


def _region_descriptors(frames: VideoFrames, region: Region) -> tuple[np.ndarray, np.ndarray]:
    top, bottom, left, right = region.box
    if bottom - top < 8 or right - left < 8 or len(frames.pixels) == 0:
        return np.zeros((0, DIM), np.float32), np.zeros(0)
    thumbs = np.stack([cv2.resize(frame[top:bottom, left:right], (THUMB, THUMB),
                                  interpolation=cv2.INTER_AREA) for frame in frames.pixels])
    informative = _entropy_bits(thumbs) >= MIN_ENTROPY_BITS
    if not informative.any():
        return np.zeros((0, DIM), np.float32), np.zeros(0)
    ranks = _ranks(thumbs[informative])
    basis = _dct_basis()
    coefficients = np.einsum("uy,nyx,vx->nuv", basis, ranks, basis).reshape(len(ranks), -1)
    vectors = coefficients[:, 1:]
    if region.mirrored:
        vectors = vectors * _mirror_signs()
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-6)
    return vectors.astype(np.float32), frames.times[informative]


def _entropy_bits(thumbs: np.ndarray) -> np.ndarray:
    """Entropy of each thumbnail's 64-level grey histogram."""
    levels = (thumbs >> 2).reshape(len(thumbs), -1).astype(np.int64)
    counts = np.zeros((len(thumbs), 64))
    np.add.at(counts, (np.repeat(np.arange(len(thumbs)), levels.shape[1]), levels.ravel()), 1.0)
    p = counts / counts.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.nansum(p * np.log2(p), axis=1)


def _ranks(thumbs: np.ndarray) -> np.ndarray:
    """Each pixel's mid-rank among its frame's pixels, centred: equal grey levels get equal
    ranks, so flat areas stay flat instead of taking the raster order."""
    n = len(thumbs)
    flat = thumbs.reshape(n, -1).astype(np.int64)
    counts = np.zeros((n, 256), np.float32)
    np.add.at(counts, (np.repeat(np.arange(n), flat.shape[1]), flat.ravel()), 1.0)
    below = np.cumsum(counts, axis=1) - counts
    mid_rank = below + (counts - 1) / 2
    ranks = np.take_along_axis(mid_rank, flat, axis=1) / flat.shape[1] - 0.5
    return ranks.reshape(thumbs.shape).astype(np.float32)
