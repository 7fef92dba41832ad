"""Cut a clip from a reference and degrade it the way pirate captures are degraded.

Every degradation is one row of ``DEGRADATIONS``, so the grid is a single parameterised code
path: ffmpeg cuts and filters the clip (mono, 44.1 kHz float), an optional numpy stage mixes in
noise, speech or reverb at an exact level, and ffmpeg writes the result — a real encode for the
codec rows, 16-bit WAV otherwise.

Ground truth follows the proto's convention: ``speed`` = query playback rate ÷ reference rate,
so query time ``t`` shows reference time ``reference_start_s + t * speed``.
"""

from __future__ import annotations

import functools
import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.signal import fftconvolve

from benchmarks.corpus import SPEECH_REEL, probe_duration

SAMPLE_RATE = 44100
SEMITONE = 2.0 ** (1.0 / 12.0)
FFMPEG = ("ffmpeg", "-nostdin", "-loglevel", "error")


@functools.cache
def has_rubberband() -> bool:
    """Whether this ffmpeg was built with librubberband (Debian's is)."""
    filters = subprocess.run([*FFMPEG, "-hide_banner", "-filters"], capture_output=True, text=True)
    return any(line.split()[1:2] == ["rubberband"] for line in filters.stdout.splitlines())


def pitch_filter(semitones: float) -> str:
    """Pitch shift with tempo kept: rubberband if available, else resample then re-stretch."""
    ratio = SEMITONE**semitones
    if has_rubberband():
        return f"rubberband=pitch={ratio:.6f}"
    return f"asetrate={SAMPLE_RATE * ratio:.3f},aresample={SAMPLE_RATE},atempo={1 / ratio:.6f}"


def speed_filter(speed: float) -> str:
    """Pitch and tempo together, like a turntable or a sped-up upload."""
    return f"asetrate={SAMPLE_RATE * speed:.3f},aresample={SAMPLE_RATE}"


@dataclass(frozen=True)
class Degradation:
    """One row of the grid: what ffmpeg filters, what numpy mixes in, how the clip is written."""

    filters: str = ""
    speed: float = 1.0
    noise_snr_db: float | None = None
    speech_snr_db: float | None = None
    reverb_rt60_s: float | None = None
    encode: tuple[str, ...] = ("-c:a", "pcm_s16le")
    ext: str = "wav"

    @property
    def digest(self) -> str:
        """Short hash of every parameter, so a changed row never reuses stale cached clips."""
        return hashlib.sha256(repr(self).encode()).hexdigest()[:8]


DEGRADATIONS: dict[str, Degradation] = {
    "clean": Degradation(),
    "mp3_32k": Degradation(encode=("-c:a", "libmp3lame", "-b:a", "32k", "-ar", "22050"),
                           ext="mp3"),
    "aac_48k": Degradation(encode=("-c:a", "aac", "-b:a", "48k"), ext="m4a"),
    "opus_16k": Degradation(encode=("-c:a", "libopus", "-b:a", "16k", "-ar", "48000"),
                            ext="opus"),
    "noise_5db": Degradation(noise_snr_db=5.0),
    "noise_0db": Degradation(noise_snr_db=0.0),
    "speech_0db": Degradation(speech_snr_db=0.0),
    "speech_-5db": Degradation(speech_snr_db=-5.0),
    "speech_-10db": Degradation(speech_snr_db=-10.0),
    "telephone": Degradation(
        filters="highpass=f=300,highpass=f=300,lowpass=f=3400,lowpass=f=3400",
        encode=("-c:a", "pcm_s16le", "-ar", "8000")),
    "echo": Degradation(filters="aecho=0.8:0.7:60|180:0.4|0.25"),
    "reverb": Degradation(reverb_rt60_s=0.6),
    "speed_+5": Degradation(filters=speed_filter(1.05), speed=1.05),
    "speed_-5": Degradation(filters=speed_filter(0.95), speed=0.95),
    "tempo_+10": Degradation(filters="atempo=1.1", speed=1.1),
    "tempo_-10": Degradation(filters="atempo=0.9", speed=0.9),
    "pitch_+1": Degradation(filters=pitch_filter(1.0)),
    "pitch_-1": Degradation(filters=pitch_filter(-1.0)),
}


@dataclass(frozen=True)
class ClipTruth:
    """Where a clip came from: query time t shows reference time reference_start_s + t * speed."""

    degradation: str
    reference_start_s: float
    speed: float
    duration_s: float


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if samples.size else 0.0


def read_segment(src: Path, start_s: float, length_s: float, filters: str = "") -> np.ndarray:
    """Decode ``length_s`` seconds from ``start_s`` (sample-accurate seek) as mono float32."""
    chain = ",".join(f for f in (f"aformat=channel_layouts=mono,aresample={SAMPLE_RATE}", filters)
                     if f)
    done = subprocess.run(
        [*FFMPEG, "-ss", f"{start_s:.4f}", "-t", f"{length_s:.4f}", "-i", str(src), "-af", chain,
         "-ac", "1", "-ar", str(SAMPLE_RATE), "-f", "f32le", "-"],
        capture_output=True, check=True)
    return np.frombuffer(done.stdout, dtype=np.float32)


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Noise with 1/f power, shaped in the frequency domain."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n)
    spectrum[1:] /= np.sqrt(freqs[1:])
    spectrum[0] = 0.0
    return np.fft.irfft(spectrum, n)


def mix_at_snr(signal: np.ndarray, interference: np.ndarray, snr_db: float) -> np.ndarray:
    """Add ``interference`` scaled so signal RMS / interference RMS is exactly ``snr_db``."""
    level = rms(interference)
    if level == 0.0:
        return signal
    return signal + interference * (rms(signal) / level / 10.0 ** (snr_db / 20.0))


def reverberate(signal: np.ndarray, rt60_s: float, rng: np.random.Generator) -> np.ndarray:
    """Convolve with a synthetic room: direct path plus exponentially decaying noise (DRR 0 dB)."""
    t = np.arange(int(rt60_s * 1.2 * SAMPLE_RATE)) / SAMPLE_RATE
    tail = rng.standard_normal(t.size) * np.exp(-6.908 * t / rt60_s)  # -60 dB at rt60_s
    tail[: int(0.005 * SAMPLE_RATE)] = 0.0  # first reflections arrive after 5 ms
    impulse = tail / np.sqrt(np.sum(tail**2))
    impulse[0] = 1.0
    wet = fftconvolve(signal, impulse)[: signal.size]
    return wet * (rms(signal) / max(rms(wet), 1e-12))


def degrade(src_path: Path, start_s: float, duration_s: float, name: str, out_path: Path,
            rng: np.random.Generator) -> ClipTruth:
    """Write a ``duration_s`` clip of ``src_path`` from ``start_s`` with degradation ``name``.

    A speed or tempo change of s makes the clip cover ``duration_s * s`` seconds of the source.
    """
    spec = DEGRADATIONS[name]
    samples = read_segment(src_path, start_s, duration_s * spec.speed, spec.filters)
    n = round(duration_s * SAMPLE_RATE)
    clip = np.zeros(n, dtype=np.float64)
    clip[: min(n, samples.size)] = samples[:n]
    if spec.noise_snr_db is not None:
        clip = mix_at_snr(clip, pink_noise(n, rng), spec.noise_snr_db)
    if spec.speech_snr_db is not None:
        reel_end = probe_duration(SPEECH_REEL) - duration_s - 1.0
        speech = read_segment(SPEECH_REEL, rng.uniform(0.0, reel_end), duration_s)
        clip = mix_at_snr(clip, np.pad(speech, (0, max(0, n - speech.size)))[:n],
                          spec.speech_snr_db)
    if spec.reverb_rt60_s is not None:
        clip = reverberate(clip, spec.reverb_rt60_s, rng)
    peak = float(np.max(np.abs(clip))) if n else 0.0
    if peak > 0.999:  # mixing can exceed full scale; scale rather than clip
        clip *= 0.999 / peak
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(out_path.stem + ".partial" + out_path.suffix)
    subprocess.run(
        [*FFMPEG, "-y", "-f", "f32le", "-ar", str(SAMPLE_RATE), "-ac", "1", "-i", "-",
         *spec.encode, str(partial)],
        input=clip.astype("<f4").tobytes(), capture_output=True, check=True)
    partial.rename(out_path)
    return ClipTruth(name, start_s, spec.speed, duration_s)
