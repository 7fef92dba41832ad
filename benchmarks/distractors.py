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
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from fingerprint import audio
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
    values = sources[variant.source]
    if variant.partner is not None:
        values = mix(values, sources[variant.partner], variant.gain_db)
    values = change_tempo(shift_bands(values, variant.shift_bands), variant.tempo)
    return np.ascontiguousarray(values[::-1], np.float32)


def fingerprints(variant: Variant, sources: list[np.ndarray]
                 ) -> tuple[float, dict[str, Fingerprints], str]:
    """(duration s, the reference fingerprints registration would store, a content digest)
    of one distractor."""
    frames = audio.BandFrames(band_values(variant, sources))
    vectors, times, _ = audio.descriptors(frames, audio.REFERENCE_HOP_S)
    digest = hashlib.sha256(variant.name.encode()).hexdigest()
    return frames.duration_s, {"audio": Fingerprints(vectors, times, audio.peaks(frames))}, digest

