"""Decode any container FFmpeg understands to mono float audio at a fixed rate.

PyAV bundles FFmpeg, so mp3, ogg/vorbis, opus, flac, wav, m4a/aac, tracker modules and the
audio track of mp4/mkv/webm all decode with no system package.
"""

from __future__ import annotations

import io
import os
from functools import lru_cache
from math import gcd
from pathlib import Path

import av
import numpy as np
from scipy.signal import firwin, resample_poly

SAMPLE_RATE = 8000
"""Fingerprints only use bands up to 1.6 kHz, so 8 kHz keeps every useful band and decodes fast."""

MediaSource = str | os.PathLike[str] | bytes


class MediaError(ValueError):
    """The input cannot be used as media; the message says why, for a person to read."""


def decode_audio(source: MediaSource, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode the first audio stream of ``source`` (a path or the file's bytes).

    Returns float32 mono samples in [-1, 1] at ``sample_rate``. Raises ``MediaError`` for
    empty input, bytes that are not media, a file with no audio track, or a stream that
    breaks before yielding any audio. A stream that breaks part-way returns what decoded.
    """
    if sample_rate < 1000 or sample_rate > 192000:
        raise ValueError(f"sample_rate must be in 1000..192000 Hz, got {sample_rate}")
    if isinstance(source, bytes):
        if not source:
            raise MediaError("the upload is empty (0 bytes)")
        handle: str | io.BytesIO = io.BytesIO(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise MediaError(f"no such file: {path}")
        if path.stat().st_size == 0:
            raise MediaError(f"{path.name} is empty (0 bytes)")
        handle = str(path)
    try:
        container = av.open(handle, mode="r", metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise MediaError(
            "not a media file FFmpeg can read (unknown or corrupt container); "
            "send audio or video such as mp3, ogg, opus, flac, wav, m4a, mp4, mkv or webm"
        ) from exc
    with container:
        if not container.streams.audio:
            raise MediaError("the file has no audio track")
        return _decode_stream(container, container.streams.audio[0], sample_rate)


def _decode_stream(container: av.container.InputContainer, stream: av.AudioStream,
                   sample_rate: int) -> np.ndarray:
    """Downmix and resample every decodable frame; keep what decoded before any corruption.

    NumPy downmixing plus SciPy's polyphase resampler in blocks is several times faster
    than FFmpeg's resampler for this rate change, with bounded memory at the source rate.
    """
    resampler: _BlockResampler | None = None
    error: Exception | None = None
    try:
        for frame in container.decode(stream):
            if resampler is None:
                resampler = _BlockResampler(frame.sample_rate, sample_rate)
            resampler.push(_mono(frame))
    except (av.error.FFmpegError, ValueError) as exc:
        error = exc
    samples = resampler.finish() if resampler else np.zeros(0, np.float32)
    if samples.size == 0:
        detail = f" ({error})" if error else ""
        raise MediaError(f"the audio track could not be decoded: truncated or corrupt{detail}")
    np.clip(samples, -1.0, 1.0, out=samples)
    return samples


def _mono(frame: av.AudioFrame) -> np.ndarray:
    """Average the channels of any sample format to float32 in [-1, 1].

    Called once per codec frame (tens of thousands per track), so it avoids NumPy's
    slower generic reductions."""
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if not frame.format.is_planar:
        data = data.reshape(-1, channels).T
    if np.issubdtype(data.dtype, np.integer):
        data = data.astype(np.float32) / (float(np.iinfo(data.dtype).max) + 1.0)
    if channels == 1:
        return data[0].astype(np.float32, copy=False)
    if channels == 2:
        return ((data[0] + data[1]) * 0.5).astype(np.float32, copy=False)
    return data.mean(axis=0, dtype=np.float32)


@lru_cache(maxsize=16)
def _lowpass(up: int, down: int) -> np.ndarray:
    """The anti-aliasing filter resample_poly would design on every call (its default)."""
    rate = max(up, down)
    return firwin(2 * 10 * rate + 1, 1.0 / rate, window=("kaiser", 5.0))


class _BlockResampler:
    """Polyphase resampling in blocks, each computed with CONTEXT input samples of real
    signal on both sides so that the joins are seamless."""

    BLOCK = 1 << 18

    def __init__(self, rate_in: int, rate_out: int) -> None:
        g = gcd(rate_in, rate_out)
        self.up, self.down = rate_out // g, rate_in // g
        self.context = self.down * max(1, 4096 // self.down + 1)
        self.pending: list[np.ndarray] = []
        self.pending_size = 0
        self.buffer = np.zeros(0, np.float32)
        self.emitted_from = 0  # input index (within buffer) of the next output to emit
        self.out: list[np.ndarray] = []

    def push(self, samples: np.ndarray) -> None:
        self.pending.append(samples)
        self.pending_size += samples.size
        if self.pending_size >= self.BLOCK:
            self._process(final=False)

    def _process(self, final: bool) -> None:
        self.buffer = np.concatenate([self.buffer, *self.pending])
        self.pending, self.pending_size = [], 0
        if self.up == self.down:
            self.out.append(self.buffer[self.emitted_from:].copy())
            self.buffer, self.emitted_from = np.zeros(0, np.float32), 0
            return
        end = self.buffer.size if final else (
            (self.buffer.size - self.context) // self.down * self.down)
        if end <= self.emitted_from:
            return
        resampled = resample_poly(self.buffer, self.up, self.down,
                                  window=_lowpass(self.up, self.down)).astype(np.float32)
        first, last = self.emitted_from * self.up // self.down, -(-end * self.up // self.down)
        self.out.append(resampled[first:last])
        keep_from = max(0, (end - self.context) // self.down * self.down)
        self.buffer = self.buffer[keep_from:]
        self.emitted_from = end - keep_from

    def finish(self) -> np.ndarray:
        self._process(final=True)
        return np.concatenate(self.out) if self.out else np.zeros(0, np.float32)
