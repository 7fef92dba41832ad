"""Test media made at test time with PyAV, NumPy and SciPy only (no system ffmpeg).

The fixtures in tests/fixtures are real music; these helpers cut, degrade and re-encode them
the way clips found in the wild are degraded: re-encoded at a low bitrate, sped up, noisy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from scipy.signal import resample_poly

FIXTURES = Path(__file__).parent / "fixtures"
SAMPLE_RATE = 22_050
"""The fixtures' own rate: loading at it avoids a resampling step."""

CATALOGUE = ("battle", "breaking_the_chains", "knolls", "loyalists")
"""Fixtures registered as references; the *_not_in_catalogue ones never are."""


def fixture(name: str) -> Path:
    return FIXTURES / f"{name}.ogg"


def load(path: Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode the first audio stream to float32 mono at ``sample_rate``."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    chunks: list[np.ndarray] = []
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
    chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
    return np.concatenate(chunks)


def excerpt(samples: np.ndarray, start_s: float, duration_s: float,
            sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    start = round(start_s * sample_rate)
    return samples[start:start + round(duration_s * sample_rate)]


def pieces(directory: Path, names: tuple[str, ...], length_s: float, step_s: float
           ) -> list[Path]:
    """WAV pieces ``length_s`` long starting every ``step_s`` in each fixture of ``names``, as
    many as fit: different bytes each (overlapping when ``step_s`` < ``length_s``)."""
    paths = []
    for name in names:
        samples = load(fixture(name))
        for start in np.arange(0.0, len(samples) / SAMPLE_RATE - length_s + 1e-6, step_s):
            paths.append(encode(directory / f"{name}-{start:g}s.wav",
                                excerpt(samples, float(start), length_s)))
    return paths


def sped_up(samples: np.ndarray, factor: float) -> np.ndarray:
    """Play ``factor`` times faster (pitch rises too, like a sped-up tape or upload)."""
    ratio = Fraction(factor).limit_denominator(100)
    return resample_poly(samples, ratio.denominator, ratio.numerator).astype(np.float32)


def with_noise(samples: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    """Add white noise ``snr_db`` below the signal's power."""
    noise = np.random.default_rng(seed).standard_normal(samples.size).astype(np.float32)
    noise *= np.sqrt(np.mean(samples**2) / 10 ** (snr_db / 10)) / np.std(noise)
    return np.clip(samples + noise, -1.0, 1.0)


def with_speech(samples: np.ndarray, snr_db: float, sample_rate: int = SAMPLE_RATE
                ) -> np.ndarray:
    """Lay the Czech speech fixture (looped to length) over ``samples``, ``snr_db`` below
    them in power: commentary over a captured stream."""
    speech = load(fixture("speech_not_in_catalogue"), sample_rate)
    speech = np.resize(speech, samples.size)
    speech *= np.sqrt(np.mean(samples**2) / 10 ** (snr_db / 10) / np.mean(speech**2))
    mixed = samples + speech
    return (mixed / max(1.0, float(np.abs(mixed).max()))).astype(np.float32)


def encode(path: Path, samples: np.ndarray, sample_rate: int = SAMPLE_RATE,
           codec: str = "pcm_s16le", bit_rate: int | None = None, channels: int = 1) -> Path:
    """Write mono ``samples`` to ``path`` (container from its suffix) with ``codec``,
    duplicated to ``channels`` channels. PyAV re-frames, converts and, for a codec that does
    not take ``sample_rate`` (Opus), resamples to the nearest rate the codec takes."""
    layout = {1: "mono", 2: "stereo"}[channels]
    rates = av.Codec(codec, "w").audio_rates
    rate = min(rates, key=lambda r: abs(r - sample_rate)) if rates else sample_rate
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        if bit_rate:
            stream.bit_rate = bit_rate
        planes = np.repeat(samples.astype(np.float32)[None, :], channels, axis=0)
        frame = av.AudioFrame.from_ndarray(planes, format="fltp", layout=layout)
        frame.sample_rate = sample_rate
        for frame_in in (frame, None):
            container.mux(stream.encode(frame_in))
    return path


def video_only(path: Path, frames: int = 12, size: tuple[int, int] = (64, 48),
               codec: str = "mpeg4", pix_fmt: str = "yuv420p", rate: int | Fraction = 12,
               b_frames: int = 0) -> Path:
    """A short, valid video file with no audio track, of ``size`` (width, height)."""
    width, height = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.codec_context.max_b_frames = b_frames
        for i in range(frames):
            image = np.full((height, width, 3), i * 20 % 256, dtype=np.uint8)
            video_frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode(None))
    return path


def audio_then_video(path: Path, size: tuple[int, int], video_start_s: float = 5.0) -> Path:
    """An MPEG transport stream of 6 s of music whose single black picture, of ``size``,
    comes only after the sound: a stream FFmpeg cannot describe from the file's start."""
    width, height = size
    samples = excerpt(load(fixture("battle")), 0.0, 6.0)
    with av.open(str(path), "w") as container:
        sound = container.add_stream("mp2", rate=SAMPLE_RATE, layout="mono")
        sound.bit_rate = 160_000
        picture = container.add_stream("mpeg2video", rate=1)
        picture.width, picture.height, picture.pix_fmt = width, height, "yuv420p"
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="fltp", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        for frame_in in (frame, None):
            container.mux(sound.encode(frame_in))
        image = av.VideoFrame.from_ndarray(np.zeros((height, width, 3), np.uint8), format="rgb24")
        image.pts, image.time_base = round(video_start_s), Fraction(1, 1)
        for image_in in (image, None):
            container.mux(picture.encode(image_in))
    return path


@dataclass(frozen=True)
class Clip:
    """A query cut from a fixture and degraded: ``start_s`` and ``duration_s`` are in the
    reference's time; ``speed`` > 1 plays it faster; ``snr_db`` adds noise."""

    name: str
    start_s: float
    duration_s: float
    speed: float = 1.0
    snr_db: float | None = None
    suffix: str = ".wav"
    codec: str = "pcm_s16le"
    bit_rate: int | None = None

    @property
    def title(self) -> str:
        """The title the service gives the fixture when registered without one."""
        return fixture(self.name).name

    def write(self, directory: Path) -> Path:
        samples = excerpt(load(fixture(self.name)), self.start_s, self.duration_s)
        if self.speed != 1.0:
            samples = sped_up(samples, self.speed)
        if self.snr_db is not None:
            samples = with_noise(samples, self.snr_db)
        return encode(directory / f"{self.name}-{self.start_s:g}s{self.suffix}", samples,
                      codec=self.codec, bit_rate=self.bit_rate)


def video_fixture(name: str) -> Path:
    return FIXTURES / f"{name}.mp4"


def video_clip(source: Path, path: Path, start_s: float, duration_s: float,
               picture: Callable[[np.ndarray], np.ndarray] = lambda image: image,
               sound: bool = True) -> Path:
    """Cut ``duration_s`` from ``start_s`` of ``source``, pass every RGB frame through
    ``picture`` (a pirate's transformation), and write H.264 (+ AAC when ``sound``) to
    ``path``: a re-encode, as every capture is."""
    with av.open(str(source)) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or Fraction(25)
        images = [picture(frame.to_ndarray(format="rgb24")) for frame in container.decode(stream)
                  if frame.time is not None and start_s <= frame.time < start_s + duration_s]
    samples = excerpt(load(source), start_s, duration_s) if sound else None
    height, width = images[0].shape[:2]
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=rate)
        video.width, video.height, video.pix_fmt = width - width % 2, height - height % 2, "yuv420p"
        video.options = {"crf": "30", "preset": "veryfast"}
        audio = container.add_stream("aac", rate=SAMPLE_RATE, layout="mono") if sound else None
        for image in images:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(
                image[:video.height, :video.width]), format="rgb24")
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if audio is not None and samples is not None:
            frame = av.AudioFrame.from_ndarray(samples[None, :], format="fltp", layout="mono")
            frame.sample_rate = SAMPLE_RATE
            for frame_in in (frame, None):
                container.mux(audio.encode(frame_in))
    return path
