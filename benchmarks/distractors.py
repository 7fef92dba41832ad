"""Distractor references for the scale benchmark: real recorded music made into different
music, so that a catalogue can grow to thousands of hours on one machine.

Uniform random codes are not realistic distractors: they never resemble a query, so they
cost the index nothing and the matcher no doubt. Here each distractor is real music from
the corpus changed beyond what any query hypothesis undoes, in the band-energy domain
(``fingerprint.audio.BandFrames``), where the change is exact and costs nothing to decode:
always played backwards and moved in pitch by 3 to 8 semitones, and besides changed in tempo
by up to 25 % and mixed with another track. Its descriptors and peaks are then computed from
those frames as registration computes them.

Backwards, because the queries are cut from the same corpus: a forward copy of a track moved
by 2 semitones is still that recording, and clipmatch rightly finds a clip of it there (a
first run at 100 h, with half the distractors forward, counted 6 of 53 non-catalogue clips
as false matches for that reason). Reversed music keeps the instruments, density and
spectra of real music, which is what loads the index.

Moved in pitch by at least 3 semitones, because backwards alone is not enough: a held chord
or a drone sounds the same either way, so a clip of such a passage truly matches the
reversed copy of its own recording at the same pitch. At 1,000 h (dev clips, distractors
moved by 0 to 8 semitones), all 6 matches of non-catalogue clips were to reversed copies of
the clip's own track, 5 of them unshifted. Queries reach about 2 semitones at most (speed
5 % is 0.85 semitone, the query grid adds 0.8 and the descriptor tolerates a fraction more),
so from 3 semitones on a distractor is a different key of different music.

Video distractors are the corpus footage turned upside down, and besides mirrored, as a
photographic negative, or a part of the picture stretched to the whole (``VideoVariant``).
Upside down, because no query hypothesis turns a picture over (they undo mirroring,
borders, crops, insets and speeds of 0.9 to 1.1), so each copy is different footage with the
textures, motion and cuts of real footage.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import cv2
import numpy as np

from fingerprint import audio, video
from fingerprint.decode import VIDEO_FRAME_RATE
from index.store import Fingerprints

SHIFTS_BANDS = tuple(s for s in range(-24, 25, 3) if abs(s) >= 9)
"""Pitch shifts, in bands of a third of a semitone: 3 to 8 semitones up or down."""
TEMPI = (0.8, 0.9, 1.0, 1.12, 1.25)
MIX_GAIN_DB = (-6.0, 0.0)


@dataclass(frozen=True)
class Variant:
    """How one distractor is made from source track ``source`` (and ``partner``, mixed in at
    ``gain_db`` when not None)."""

    source: int
    shift_bands: int
    tempo: float
    partner: int | None = None
    gain_db: float = 0.0

    @property
    def name(self) -> str:
        mixed = f"+{self.partner}@{self.gain_db:g}dB" if self.partner is not None else ""
        return (f"distractor:{self.source}{mixed}:shift{self.shift_bands:+d}:"
                f"tempo{self.tempo:g}:reversed")

    def fingerprints(self, sources: list[np.ndarray]
                     ) -> tuple[float, dict[str, Fingerprints], str]:
        """(duration s, the reference fingerprints registration would store, a content
        digest); ``sources`` are the corpus tracks' band frames."""
        frames = audio.BandFrames(band_values(self, sources))
        vectors, times, _ = audio.descriptors(frames, audio.REFERENCE_HOP_S)
        return frames.duration_s, {"audio": Fingerprints(vectors, times, audio.peaks(frames))}, \
            _digest(self.name)


VIDEO_WINDOWS = {"whole": (0.0, 1.0, 0.0, 1.0), "centre": (0.15, 0.85, 0.15, 0.85),
                 "left": (0.0, 1.0, 0.0, 0.7), "right": (0.0, 1.0, 0.3, 1.0)}
"""Part of the picture a video distractor shows, stretched back to the whole frame, as
(top, bottom, left, right) fractions: each frames the footage differently from the others
and from the views registration keeps (the whole and its centre without 5 % a side)."""


@dataclass(frozen=True)
class VideoVariant:
    """How one video distractor is made from the frames of source video ``source``: always
    upside down, and besides as the other fields say. Only changes of the picture make
    different descriptors: a copy played backwards or at another speed would repeat the
    same frames, which different footage never does."""

    source: int
    mirrored: bool
    negative: bool
    window: str

    @property
    def name(self) -> str:
        changes = [name for name, on in (("mirrored", self.mirrored),
                                         ("negative", self.negative)) if on]
        return f"distractor:video{self.source}:upside-down:{':'.join(changes)}:{self.window}"

    def fingerprints(self, sources: list[np.ndarray]
                     ) -> tuple[float, dict[str, Fingerprints], str]:
        """As ``Variant.fingerprints``; ``sources`` are the corpus videos' grey frames."""
        pixels = sources[self.source][:, ::-1]
        height, width = pixels.shape[1:]
        top, bottom, left, right = VIDEO_WINDOWS[self.window]
        if (top, bottom, left, right) != (0.0, 1.0, 0.0, 1.0):
            rows = slice(round(top * height), round(bottom * height))
            columns = slice(round(left * width), round(right * width))
            pixels = np.stack([cv2.resize(np.ascontiguousarray(p[rows, columns]),
                                          (width, height), interpolation=cv2.INTER_AREA)
                               for p in pixels])
        if self.mirrored:
            pixels = pixels[:, :, ::-1]
        if self.negative:
            pixels = 255 - pixels
        frames = video.VideoFrames(np.ascontiguousarray(pixels),
                                   np.arange(len(pixels)) / VIDEO_FRAME_RATE)
        vectors, times, _ = video.descriptors(frames, video.reference_regions(frames))
        order = np.argsort(times, kind="stable")  # as registration stores them
        return frames.duration_s, {"video": Fingerprints(vectors[order], times[order])}, \
            _digest(self.name)


def video_plan(sources: int, seed: int = 0) -> list[VideoVariant]:
    """Every video variant of ``sources`` videos, in a fixed random order."""
    variants = [VideoVariant(source, mirrored, negative, window)
                for source in range(sources) for mirrored in (False, True)
                for negative in (False, True) for window in VIDEO_WINDOWS]
    order = np.random.default_rng(seed).permutation(len(variants))
    return [variants[i] for i in order]


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def plan(sources: int, count: int, seed: int = 0) -> list[Variant]:
    """``count`` distinct variants of ``sources`` tracks, drawn without replacement from every
    combination (pitch shift, tempo, partner): the same list for the same arguments, so a
    run can be extended."""
    rng = np.random.default_rng(seed)
    seen: set[Variant] = set()
    variants: list[Variant] = []
    while len(variants) < count:
        source = int(rng.integers(sources))
        partner = int(rng.integers(sources)) if rng.random() < 0.5 else None
        if partner == source:
            continue
        variant = Variant(source, int(rng.choice(SHIFTS_BANDS)), float(rng.choice(TEMPI)),
                          partner,
                          float(rng.choice(MIX_GAIN_DB)) if partner is not None else 0.0)
        if variant not in seen:
            seen.add(variant)
            variants.append(variant)
    return variants


def shift_bands(values: np.ndarray, bands: int) -> np.ndarray:
    """Pitch moved by ``bands`` bands (up if positive); the bands left empty take each
    frame's quietest level."""
    out = np.repeat(values.min(axis=1, keepdims=True), values.shape[1], axis=1)
    if bands > 0:
        out[:, bands:] = values[:, :-bands]
    elif bands < 0:
        out[:, :bands] = values[:, -bands:]
    else:
        out[:] = values
    return out


def change_tempo(values: np.ndarray, tempo: float) -> np.ndarray:
    """Frames resampled in time (``tempo`` > 1 plays faster), pitch unchanged."""
    positions = np.arange(0.0, values.shape[0] - 1, tempo)
    low = positions.astype(np.int64)
    weight = (positions - low)[:, None].astype(np.float32)
    return values[low] * (1 - weight) + values[low + 1] * weight


def mix(values: np.ndarray, other: np.ndarray, gain_db: float) -> np.ndarray:
    """Two tracks played together (powers added), ``other`` at ``gain_db``, as long as the
    shorter."""
    frames = min(len(values), len(other))
    return 10.0 * np.log10(np.power(10.0, values[:frames] / 10.0)
                           + np.power(10.0, (other[:frames] + gain_db) / 10.0))


def band_values(variant: Variant, sources: list[np.ndarray]) -> np.ndarray:
    values = sources[variant.source].astype(np.float32)  # stored as float16
    if variant.partner is not None:
        values = mix(values, sources[variant.partner].astype(np.float32), variant.gain_db)
    values = change_tempo(shift_bands(values, variant.shift_bands), variant.tempo)
    return np.ascontiguousarray(values[::-1], np.float32)
