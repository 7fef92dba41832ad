"""Audio fingerprint: log band energies per frame, and window descriptors for FAISS.

Stage 1, ``band_frames``: a log-frequency spectrogram (bands a third of a semitone apart,
40-1613 Hz) at 31.25 frames/s. It is what a crawler computes and sends, and what
every descriptor is derived from.

Stage 2, ``descriptors``: one L2-normalised vector per window of ``WINDOW_S`` seconds.
Each window is pooled into coarse time x band grids of mean-removed log energies, one per
band range, each projected onto a low-order 2-D DCT basis, so that a window compares by
inner product and survives codecs, noise, band limits and echo. The ranges, 150-1200 Hz and
50-400 Hz, are where music keeps most of its energy: added noise or speech at 0 dB SNR
drowns the weaker upper bands first (measured on the dev clips, a 300-3400 Hz grid found 5 %
of 10 s clips under speech at 0 dB, 150-1200 Hz 52 %, both ranges 78 %), while the
telephone band's 300 Hz high-pass only lowers the low cells, which the per-band mean removal
absorbs. Speed, tempo and pitch changes are handled on the query side: the query's
descriptors are computed for a small grid of frequency shifts and time scales
(``QUERY_GRID``), each a resampling of the band frames, so one of them lines up with the
reference within the descriptor's tolerance.

Stage 2b, ``peaks``: the strongest local maxima of the band frames, a constellation in the
manner of Wang's landmarks. Noise or speech laid over music masks some of its peaks but
cannot move the ones it leaves, so a candidate alignment is checked by how many reference
peaks land on query peaks (``index.align.peak_evidence``): at 0 dB SNR the window
descriptors of the true reference are hardly more alike than a look-alike track's, while
its peaks still coincide far above chance.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.fft
from scipy.ndimage import maximum_filter, uniform_filter

from fingerprint.decode import SAMPLE_RATE

FORMAT = "logbands-v3"
N_FFT = 1024
HOP = 256
FRAME_RATE_HZ = SAMPLE_RATE / HOP
BANDS_PER_SEMITONE = 3
LOW_HZ = 40.0
N_BANDS = 193  # 40 Hz * 2**(192/36) = 1613 Hz: room to shift every band range by +-1.5 semitones

# Descriptor geometry.
WINDOW_S = 2.5
TIME_CELLS = 14
BAND_RANGES_HZ = ((150.0, 1200.0), (50.0, 400.0))
"""Each window is described in two band ranges, concatenated: 150-1200 Hz survives the
telephone band and noise; 50-400 Hz holds the bass and drums that speech barely reaches
(speech overlaid at 0 dB is 20-30 dB below the music there)."""
FREQ_CELLS = 16
DCT_TIME = 6
DCT_FREQ = 10
DIM = len(BAND_RANGES_HZ) * DCT_TIME * DCT_FREQ
REFERENCE_HOP_S = 0.25
QUERY_HOP_S = 0.125

SILENCE_DB = -70.0
"""Frames quieter than this (dBFS) carry no fingerprint."""

PEAKS_FORMAT = "peaks-v1"
PEAK_NEIGHBOURHOOD = (7, 9)
"""A peak is the loudest cell of its 7 frames (0.2 s) x 9 bands (3 semitones)."""
PEAK_BACKGROUND = (31, 37)
"""and louder than the mean dB of the 1 s x 1 octave around it (its prominence)."""
PEAKS_PER_S = 30.0
"""The most prominent peaks kept per second: 4 bytes each, 0.43 MB per hour of reference."""
PEAK_BLOCK_FRAMES = 32
_BAND_BITS = 8


@dataclass(frozen=True)
class BandFrames:
    """Log band energies (dB), one row per frame; the unit a crawler sends."""

    values: np.ndarray
    frame_rate_hz: float = FRAME_RATE_HZ
    format: str = FORMAT

    def __post_init__(self) -> None:
        if self.format != FORMAT:
            raise ValueError(f"fingerprint format {self.format!r} is not {FORMAT!r}")
        if self.values.ndim != 2 or self.values.shape[1] != N_BANDS:
            raise ValueError(
                f"band frames must have shape (frames, {N_BANDS}), got {self.values.shape}")
        if abs(self.frame_rate_hz - FRAME_RATE_HZ) > 1e-6:
            raise ValueError(
                f"frame rate must be {FRAME_RATE_HZ} Hz, got {self.frame_rate_hz}")
        if not np.all(np.isfinite(self.values)):
            raise ValueError("band frames contain NaN or infinite values")

    @property
    def duration_s(self) -> float:
        """Audio the frames cover: the last frame starts (n - 1) hops in and spans N_FFT."""
        frames = self.values.shape[0]
        return (frames - 1) / self.frame_rate_hz + N_FFT / SAMPLE_RATE if frames else 0.0


@lru_cache(maxsize=1)
def _filterbank() -> np.ndarray:
    """Triangular filters on a third-of-a-semitone log grid, shape (fft bins, bands)."""
    freqs = np.fft.rfftfreq(N_FFT, 1.0 / SAMPLE_RATE)
    step = 2.0 ** (1.0 / (12 * BANDS_PER_SEMITONE))
    centres = LOW_HZ * step ** np.arange(N_BANDS)
    # At low frequencies the bands are narrower than an FFT bin: widen them to 1.5 bins.
    half_width = np.maximum(centres * (step - 1.0) * 1.5, 1.5 * SAMPLE_RATE / N_FFT)
    weights = 1.0 - np.abs(freqs[:, None] - centres[None, :]) / half_width[None, :]
    weights = np.clip(weights, 0.0, None)
    return (weights / weights.sum(axis=0, keepdims=True)).astype(np.float32)


def band_frames(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> BandFrames:
    """Log band energies of mono ``samples`` (which must be at ``SAMPLE_RATE``)."""
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"samples must be at {SAMPLE_RATE} Hz, got {sample_rate}")
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"samples must be mono (1-D), got shape {samples.shape}")
    if samples.size < N_FFT:
        return BandFrames(np.zeros((0, N_BANDS), dtype=np.float32))
    n_frames = 1 + (samples.size - N_FFT) // HOP
    frames = np.lib.stride_tricks.as_strided(
        samples, shape=(n_frames, N_FFT), strides=(samples.strides[0] * HOP, samples.strides[0]))
    window = np.hanning(N_FFT).astype(np.float32)
    filters = _filterbank()
    bins = int(np.flatnonzero(filters.any(axis=1))[-1]) + 1  # the bands end at 1.6 kHz
    power = np.empty((n_frames, N_BANDS), dtype=np.float32)
    block = 2048  # bounded memory for long references
    for start in range(0, n_frames, block):
        spectrum = scipy.fft.rfft(frames[start:start + block] * window, axis=1)[:, :bins]
        energy = spectrum.real**2 + spectrum.imag**2
        power[start:start + block] = energy @ filters[:bins]
    scale = 4.0 / float(window.sum()) ** 2  # full-scale sine -> 0 dB
    return BandFrames(10.0 * np.log10(power * scale + 1e-12))


@dataclass(frozen=True)
class Transform:
    """A query-side hypothesis: the query is shifted by ``semitones`` and played ``time_scale``
    times faster than the reference."""

    semitones: float = 0.0
    time_scale: float = 1.0


def _speed(ratio: float) -> Transform:
    return Transform(semitones=12.0 * float(np.log2(ratio)), time_scale=ratio)


QUERY_GRID: tuple[Transform, ...] = (
    Transform(),
    _speed(1.04), _speed(1 / 1.04),
    Transform(0.8, 1.0), Transform(-0.8, 1.0),
    Transform(0.0, 1.07), Transform(0.0, 1 / 1.07),
)


def _band_positions(semitones: float) -> tuple[np.ndarray, np.ndarray]:
    """Fine-band edges of the FREQ_CELLS coarse cells of every range of BAND_RANGES_HZ, one
    range after the other, shifted."""
    los, his = [], []
    for low_hz, high_hz in BAND_RANGES_HZ:
        lo = 12 * BANDS_PER_SEMITONE * np.log2(low_hz / LOW_HZ)
        hi = 12 * BANDS_PER_SEMITONE * np.log2(high_hz / LOW_HZ)
        edges = np.linspace(lo, hi, FREQ_CELLS + 1) + semitones * BANDS_PER_SEMITONE
        if edges[0] < 0 or edges[-1] > N_BANDS - 1:
            raise ValueError(f"a shift of {semitones} semitones leaves the band range")
        los.append(edges[:-1])
        his.append(edges[1:])
    return np.concatenate(los), np.concatenate(his)


def _cell_means(cumulative: np.ndarray, lo: np.ndarray, hi: np.ndarray, axis: int) -> np.ndarray:
    """Mean over fractional index ranges [lo, hi) along ``axis`` of the array whose
    cumulative sum (with a leading zero) is ``cumulative``; linear inside a step."""
    shape = [1] * cumulative.ndim
    shape[axis] = -1

    def at(pos: np.ndarray) -> np.ndarray:
        base = np.clip(np.floor(pos).astype(np.int64), 0, cumulative.shape[axis] - 2)
        frac = (pos - base).astype(np.float32).reshape(shape)
        a = np.take(cumulative, base, axis=axis)
        return a + (np.take(cumulative, base + 1, axis=axis) - a) * frac

    return (at(hi) - at(lo)) / (hi - lo).astype(np.float32).reshape(shape)


@lru_cache(maxsize=1)
def _dct_basis() -> np.ndarray:
    """Orthonormal 2-D DCT-II basis, shape (TIME_CELLS * FREQ_CELLS, DCT_TIME * DCT_FREQ): orders
    1..DCT_TIME in time x 1..DCT_FREQ in frequency (order 0 is zero on both axes once the
    means are removed). Low orders keep the coarse shape and drop fine, fragile detail."""
    def basis(n: int, orders: np.ndarray) -> np.ndarray:
        x = (np.arange(n) + 0.5) / n
        m = np.cos(np.pi * orders[:, None] * x[None, :])
        return m / np.linalg.norm(m, axis=1, keepdims=True)
    bt = basis(TIME_CELLS, np.arange(1, DCT_TIME + 1))
    bf = basis(FREQ_CELLS, np.arange(1, DCT_FREQ + 1))
    return np.einsum("at,bf->tfab", bt, bf).reshape(TIME_CELLS * FREQ_CELLS, -1).astype(
        np.float32)


def descriptors(frames: BandFrames, hop_s: float,
                transforms: tuple[Transform, ...] = (Transform(),)
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Window descriptors every ``hop_s`` seconds of the frames' own time axis, for each
    transform.

    Returns (vectors float32 [n, DIM], window start times in seconds, transform index).
    Silent windows are dropped: they cannot identify anything.
    """
    values = frames.values
    power = np.power(10.0, values / 10.0, dtype=np.float32)
    cum_f = np.concatenate([np.zeros((values.shape[0], 1), np.float32),
                            np.cumsum(power, axis=1)], axis=1)
    parts = [_windows(cum_f, hop_s, transform) for transform in transforms]
    vectors = np.concatenate([p[0] for p in parts])
    times = np.concatenate([p[1] for p in parts])
    which = np.concatenate([np.full(len(p[1]), i, np.int64) for i, p in enumerate(parts)])
    return vectors, times, which


def _windows(cum_f: np.ndarray, hop_s: float, transform: Transform
             ) -> tuple[np.ndarray, np.ndarray]:
    """Descriptors of one transform from the band-axis cumulative power."""
    n_frames = cum_f.shape[0]
    span_frames = WINDOW_S * FRAME_RATE_HZ * transform.time_scale
    n_windows = int(np.floor((n_frames - span_frames) / (hop_s * FRAME_RATE_HZ))) + 1
    if n_windows <= 0:
        return np.zeros((0, DIM), np.float32), np.zeros(0, np.float32)
    starts = np.arange(n_windows) * hop_s * FRAME_RATE_HZ
    band_lo, band_hi = _band_positions(transform.semitones)
    # Power is summed across the fine bands of a cell, but averaged in dB over the frames of
    # a time cell: a geometric mean in time, so that bursts of speech or noise in a few
    # frames do not swamp the music between them (speech at 0 dB: 25 % found -> 52 %).
    coarse = 10.0 * np.log10(_cell_means(cum_f, band_lo, band_hi, axis=1) + 1e-10)
    # float64: a running sum of dB values over an hour-long reference would lose the
    # precision of the differences taken from it.
    columns = coarse.shape[1]
    cum_t = np.concatenate([np.zeros((1, columns)), np.cumsum(coarse, axis=0, dtype=np.float64)])
    offsets = np.linspace(0.0, span_frames, TIME_CELLS + 1)
    cell_lo = (starts[:, None] + offsets[None, :-1]).reshape(-1)
    cell_hi = (starts[:, None] + offsets[None, 1:]).reshape(-1)
    grid = _cell_means(cum_t, cell_lo, cell_hi, axis=0).reshape(
        n_windows, TIME_CELLS, columns).astype(np.float32)
    # Loudness in power, as a listener hears it: a window of quiet notes between silences
    # still counts, though its mean in dB is low.
    loud = np.power(10.0, grid / 10.0).mean(axis=(1, 2)) > 10.0 ** (SILENCE_DB / 10.0)
    if not loud.any():
        return np.zeros((0, DIM), np.float32), np.zeros(0, np.float32)
    # One grid per band range: (windows, ranges, time cells, freq cells).
    log_grid = grid[loud].reshape(-1, TIME_CELLS, len(BAND_RANGES_HZ), FREQ_CELLS)
    log_grid = log_grid.transpose(0, 2, 1, 3)
    # Remove each band's level (EQ, band limits, steady noise) and each time cell's level
    # (loudness swells and fades, which unrelated music shares): what is left is the shape.
    log_grid -= log_grid.mean(axis=2, keepdims=True)
    log_grid -= log_grid.mean(axis=3, keepdims=True)
    vectors = log_grid.reshape(*log_grid.shape[:2], -1) @ _dct_basis()
    # Each range weighs the same: unit length each, then the whole.
    vectors /= np.maximum(np.linalg.norm(vectors, axis=2, keepdims=True), 1e-6)
    vectors = vectors.reshape(vectors.shape[0], DIM) / np.sqrt(len(BAND_RANGES_HZ))
    times = (starts[loud] / FRAME_RATE_HZ).astype(np.float32)
    return vectors.astype(np.float32), times


def peaks(frames: BandFrames) -> np.ndarray:
    """The most prominent spectral peaks, ``PEAKS_PER_S`` per second at most, as sorted uint32
    codes ``frame << 8 | band`` (see ``peak_frames_bands``).

    The quota is taken per block of ``PEAK_BLOCK_FRAMES`` frames, so quiet passages keep
    their peaks too, and prominence (over the local mean rather than absolute level) ranks
    them, so that a loud bass note does not crowd out the melody.
    """
    values = frames.values
    if values.shape[0] == 0:
        return np.zeros(0, np.uint32)
    top = values == maximum_filter(values, size=PEAK_NEIGHBOURHOOD, mode="nearest")
    prominence = values - uniform_filter(values, size=PEAK_BACKGROUND, mode="nearest")
    frame, band = np.nonzero(top & (values > SILENCE_DB) & (prominence > 0))
    strength = prominence[frame, band]
    block = frame // PEAK_BLOCK_FRAMES
    order = np.lexsort((-strength, block))
    frame, band, block = frame[order], band[order], block[order]
    rank = np.arange(len(frame)) - np.searchsorted(block, block, side="left")
    keep = rank < PEAKS_PER_S * PEAK_BLOCK_FRAMES / FRAME_RATE_HZ
    return np.sort((frame[keep].astype(np.uint32) << _BAND_BITS) | band[keep].astype(np.uint32))


def peak_frames_bands(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frame and band indices (int64) of ``peaks`` codes."""
    codes = np.asarray(codes, dtype=np.uint32)
    return ((codes >> _BAND_BITS).astype(np.int64),
            (codes & ((1 << _BAND_BITS) - 1)).astype(np.int64))


def peaks_between(codes: np.ndarray, first_frame: float, last_frame: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Frames and bands of the ``peaks`` codes in frames [first_frame, last_frame]."""
    return peak_frames_bands(codes[peaks_slice(codes, first_frame, last_frame)])


def peaks_slice(codes: np.ndarray, first_frame: float, last_frame: float) -> slice:
    """Where the ``peaks`` codes of frames [first_frame, last_frame] lie (either end may be
    infinite): the codes sort by frame."""
    first, last = np.clip([np.ceil(first_frame), np.floor(last_frame)], -1, 1 << (32 - _BAND_BITS))
    bounds = np.array([max(first, 0), last + 1], np.int64) << _BAND_BITS
    return slice(*(int(i) for i in np.searchsorted(codes, bounds)))
