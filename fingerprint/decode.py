"""Decode any container FFmpeg understands: mono float audio at a fixed rate, and small grey
video frames at a fixed frame rate, both in one pass over the file.

PyAV bundles FFmpeg, so mp3, ogg/vorbis, opus, flac, wav, m4a/aac, tracker modules and
mp4/mkv/webm/avi/mpeg-ts video all decode with no system package.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

SAMPLE_RATE = 8000
"""Fingerprints only use bands up to 1.6 kHz, so 8 kHz keeps every useful band and decodes fast."""

VIDEO_FRAME_RATE = 4.0
"""Video frames kept per second, chosen by timestamp whatever the source's frame rate: shots
change more slowly than this, and a 10 s clip still gives 40 frames to align."""
VIDEO_WIDTH = 128
"""Kept frames are scaled to this many grey pixels across (aspect kept): enough to find black
borders and an inset picture; the fingerprint itself uses 32 x 32."""
MAX_VIDEO_HEIGHT = 4 * VIDEO_WIDTH
HOLD_MAX_S = 2.0
"""Ticks a source skips get its previous frame, unless it stayed this long (a gap, not a
picture held on screen)."""

MAX_DURATION_S = 4 * 3600.0
"""Longest media decoded: what a pass holds before fingerprinting (about 250 MB per hour of
video with sound) stays bounded whatever the upload. Longer media is registered in parts."""
MAX_FRAME_PIXELS = 7680 * 4320
"""Largest picture decoded (8K): a claimed size beyond it is refused before FFmpeg allocates
frames for it."""

FAST_PROBE = {"probesize": "65536"}
"""FFmpeg reads up to 5 MB to describe the streams by default, which for a clip in an
uncompressed container (WAV) costs more than decoding it (measured 18 ms against 5 ms for
10 s). Container headers say all that is needed within the first 64 kB; where they do not
(a transport stream whose picture starts late) or the short look cannot even recognise the
file, it is probed again with the defaults."""

MediaSource = str | os.PathLike[str] | bytes


class MediaError(ValueError):
    """The input cannot be used as media; the message says why, for a person to read."""


class MediaTooLong(MediaError):
    """The media runs past the longest duration the caller accepts."""


@dataclass(frozen=True)
class Decoded:
    """What one pass over a file gives: either part is None when the file has no such track."""

    samples: np.ndarray | None
    """mono float32 in [-1, 1] at SAMPLE_RATE"""
    frames: np.ndarray | None
    """(n, height, VIDEO_WIDTH) uint8 grey frames at VIDEO_FRAME_RATE"""
    frame_times: np.ndarray | None
    """(n,) float64 seconds from the video stream's first frame"""


_decoder_threads = 0


def set_decoder_threads(count: int) -> None:
    """Threads each video decoder may use: 0 (the default) lets FFmpeg take one per core,
    right for one decode at a time; a process of a pool that already decodes one file per
    core sets 1, or the decoders' threads fight over the cores (measured: 40 % more CPU
    per hour of video with two processes of two threads each)."""
    global _decoder_threads
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    _decoder_threads = count


def decode_audio(source: MediaSource, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode the first audio stream of ``source`` (a path or the file's bytes).

    Returns float32 mono samples in [-1, 1] at ``sample_rate``. Raises ``MediaError`` for
    empty input, bytes that are not media, a file with no audio track, or a stream that
    breaks before yielding any audio. A stream that breaks part-way returns what decoded.
    """
    samples = decode_media(source, video=False, sample_rate=sample_rate).samples
    assert samples is not None  # decode_media raises when the wanted track is missing
    return samples


def decode_media(source: MediaSource, *, audio: bool = True, video: bool = True,
                 sample_rate: int = SAMPLE_RATE,
                 max_duration_s: float = MAX_DURATION_S) -> Decoded:
    """Decode the first audio and the first video stream of ``source`` in one pass.

    Raises ``MediaError`` for empty input, bytes that are not media, a file with none of the
    wanted tracks, a track that breaks before yielding anything, pictures larger than 8K, or
    media that runs past ``max_duration_s``. A stream that breaks part-way keeps what decoded
    before the break.
    """
    if sample_rate < 1000 or sample_rate > 192000:
        raise ValueError(f"sample_rate must be in 1000..192000 Hz, got {sample_rate}")
    if max_duration_s <= 0:
        raise ValueError(f"max_duration_s must be > 0, got {max_duration_s}")
    with _open(source) as container:
        audio_stream = container.streams.audio[0] if audio and container.streams.audio else None
        video_stream = _picture_stream(container) if video else None
        if audio_stream is None and video_stream is None:
            wanted = " or ".join(kind for kind, on in (("audio", audio), ("video", video)) if on)
            raise MediaError(f"the file has no {wanted} track")
        resampler: _BlockResampler | None = None
        sampler = _FrameSampler(video_stream) if video_stream is not None else None
        error: Exception | None = None
        last_time = max_duration_s + (container.start_time or 0) / av.time_base
        try:
            for packet in container.demux([s for s in (audio_stream, video_stream) if s]):
                try:
                    decoded = packet.decode()
                except (av.error.FFmpegError, ValueError) as exc:
                    error = exc  # a damaged packet: skip it, the stream goes on after it
                    continue
                for frame in decoded:
                    if frame.time is not None and frame.time > last_time:
                        raise MediaTooLong(
                            f"the media runs longer than {max_duration_s:g} s "
                            f"({max_duration_s / 60:g} min), the longest accepted: split it "
                            "into parts and send each")
                    if isinstance(frame, av.AudioFrame):
                        if resampler is None:
                            resampler = _BlockResampler(frame.sample_rate, sample_rate)
                        resampler.push(frame)
                    elif sampler is not None:
                        sampler.push(frame)
        except MediaError:  # MediaTooLong included
            raise
        except (av.error.FFmpegError, ValueError) as exc:
            error = exc  # the container itself broke: keep what decoded before
    detail = f" ({error})" if error else ""
    samples = None
    if audio_stream is not None:
        samples = resampler.finish() if resampler else np.zeros(0, np.float32)
        if samples.size == 0:
            raise MediaError(f"the audio track could not be decoded: truncated or corrupt{detail}")
        np.clip(samples, -1.0, 1.0, out=samples)
    frames = times = None
    if sampler is not None:
        frames, times = sampler.finish()
        if len(frames) == 0:
            raise MediaError(f"the video track could not be decoded: truncated or corrupt{detail}")
    return Decoded(samples, frames, times)


def _open(source: MediaSource) -> av.container.InputContainer:
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
    error: Exception | None = None
    for options in (FAST_PROBE, {}):  # a quick look first; a proper one if it falls short
        if isinstance(handle, io.BytesIO):
            handle.seek(0)
        try:
            container = av.open(handle, mode="r", metadata_errors="ignore", options=options)
        except (av.error.FFmpegError, UnicodeDecodeError) as exc:
            error = exc
            continue
        if options is not FAST_PROBE or all(_described(s) for s in container.streams):
            return container
        container.close()
    raise MediaError(
        "not a media file FFmpeg can read (unknown or corrupt container); "
        "send audio or video such as mp3, ogg, opus, flac, wav, m4a, mp4, mkv or webm"
    ) from error


def _described(stream: av.stream.Stream) -> bool:
    """Whether probing found what decoding needs: a rate and channels, or a picture size."""
    context = stream.codec_context
    if stream.type == "audio":
        return bool(context.sample_rate and context.channels)
    if stream.type == "video":
        return bool(context.width and context.height)
    return True


def _picture_stream(container: av.container.InputContainer) -> av.VideoStream | None:
    """The first real video stream: cover art attached to a music file is one still picture,
    not video to fingerprint."""
    for stream in container.streams.video:
        if stream.codec_context.width * stream.codec_context.height > MAX_FRAME_PIXELS:
            raise MediaError(
                f"the video's pictures are {stream.codec_context.width}x"
                f"{stream.codec_context.height}, larger than the 8K (7680x4320) accepted: "
                f"scale it down first")
        if not stream.disposition & av.stream.Disposition.attached_pic:
            stream.thread_type = "AUTO"
            stream.codec_context.thread_count = _decoder_threads
            stream.codec_context.skip_frame = "NONREF"
            # The deblocking filter smooths block edges a few pixels wide, which the 128-pixel
            # grey frames cannot show (mean change 0.2 grey levels on the 720p episodes), and
            # it costs a sixth of H.264 decoding (measured: 2.9 -> 2.3 CPU s per minute).
            stream.codec_context.options = {"skip_loop_filter": "all"}
            return stream
    return None


class _FrameSampler:
    """Keeps the first decoded frame at or after each tick of VIDEO_FRAME_RATE (by timestamp,
    so any source frame rate, variable ones included, gives the same instants), scaled by
    FFmpeg to VIDEO_WIDTH grey pixels across.

    Decoding dominates the cost of video, so frames no other frame refers to (most B-frames)
    are not decoded at all: that halves the work on typical H.264, and the frames left still
    come several times per tick. A source whose remaining frames come further apart than a
    tick gets every frame decoded from then on.

    A source may still show a picture for longer than a tick: a low or variable frame rate,
    or AVI's empty chunks that repeat the previous frame (a camera's static shots). Each
    tick it skips gets the picture on screen then, the previous frame, for up to
    ``HOLD_MAX_S``: a reference with holes in its tick grid would be rated by how many query
    frames fall into them rather than by what they show."""

    def __init__(self, stream: av.VideoStream) -> None:
        self.codec = stream.codec_context
        self.previous: float | None = None
        self.rate = float(stream.average_rate or 25)
        self.aspect = float(stream.sample_aspect_ratio or 1) or 1.0  # non-square pixels (DVD)
        self.origin: float | None = None
        self.next_time = 0.0
        self.count = 0
        self.frames: list[np.ndarray] = []
        self.times: list[float] = []

    def push(self, frame: av.VideoFrame) -> None:
        time = frame.time if frame.time is not None else self.count / self.rate
        self.count += 1
        if self.origin is None:
            self.origin = time
        time -= self.origin
        if (self.previous is not None and time - self.previous > 1 / VIDEO_FRAME_RATE + 1e-6
                and self.codec.skip_frame != "DEFAULT"):
            self.codec.skip_frame = "DEFAULT"
        self.previous = time
        if time + 1e-6 < self.next_time or frame.width < 2 or frame.height < 2:
            return
        if self.frames and time - self.times[-1] <= HOLD_MAX_S:
            # The ticks nearest to neither frame (frames are found by their nearest tick).
            held = np.arange(round(self.times[-1] * VIDEO_FRAME_RATE) + 1,
                             round(time * VIDEO_FRAME_RATE)) / VIDEO_FRAME_RATE
            self.frames += [self.frames[-1]] * len(held)
            self.times += held.tolist()
        height = round(VIDEO_WIDTH * frame.height / (frame.width * self.aspect) / 2) * 2
        height = min(max(height, 8), MAX_VIDEO_HEIGHT)
        grey = _grey(frame, VIDEO_WIDTH, height)
        if self.frames and grey.shape != self.frames[0].shape:  # the size changed mid-stream
            grey = cv2.resize(grey, self.frames[0].shape[::-1], interpolation=cv2.INTER_AREA)
        self.frames.append(grey)
        self.times.append(time)
        self.next_time = (np.floor(time * VIDEO_FRAME_RATE + 1e-6) + 1) / VIDEO_FRAME_RATE

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.frames:
            return np.zeros((0, 8, VIDEO_WIDTH), np.uint8), np.zeros(0)
        return np.stack(self.frames), np.asarray(self.times, dtype=np.float64)


_PLANAR_LUMA = {"yuv420p", "yuv422p", "yuv444p", "nv12", "gray",
                "yuvj420p", "yuvj422p", "yuvj444p"}
_FULL_RANGE = {"gray", "yuvj420p", "yuvj422p", "yuvj444p"}
_STUDIO_TO_FULL = np.clip(np.round((np.arange(256) - 16) * 255 / 219), 0, 255).astype(np.uint8)
"""Studio-range luma (16-235) stretched to 0-255, as FFmpeg's grey conversion does."""


def _grey(frame: av.VideoFrame, width: int, height: int) -> np.ndarray:
    """The frame's luma scaled to ``width`` x ``height``, 0-255.

    Most decoders hand over 8-bit planar YUV, whose first plane already is the grey picture:
    OpenCV shrinks it in a third less time than a full FFmpeg conversion. Other pixel
    formats go through FFmpeg."""
    if frame.format.name not in _PLANAR_LUMA:
        return frame.reformat(width=width, height=height, format="gray",
                              interpolation="AREA").to_ndarray()
    plane = frame.planes[0]
    luma = np.frombuffer(plane, np.uint8, plane.line_size * frame.height)
    luma = luma.reshape(frame.height, plane.line_size)[:, :frame.width]
    grey = cv2.resize(luma, (width, height), interpolation=cv2.INTER_AREA)
    full = frame.format.name in _FULL_RANGE or frame.color_range == 2  # 2: JPEG range
    return grey if full else _STUDIO_TO_FULL[grey]


SAMPLE_DTYPES = {"u8": np.uint8, "s16": np.int16, "s32": np.int32, "flt": np.float32,
                 "dbl": np.float64, "s64": np.int64}
"""FFmpeg's sample formats (the planar ones end in "p") as NumPy types."""


def _to_mono(planes: list[np.ndarray], planar: bool, channels: int) -> np.ndarray:
    """Average the channels of decoded samples (one array per plane) to float32 in [-1, 1]."""
    data = np.stack(planes) if planar else planes[0].reshape(-1, channels).T
    if data.dtype == np.uint8:  # offset binary
        data = (data.astype(np.float32) - 128.0) / 128.0
    elif np.issubdtype(data.dtype, np.integer):
        data = data.astype(np.float32) / (float(np.iinfo(data.dtype).max) + 1.0)
    return data.mean(axis=0, dtype=np.float32) if channels > 1 else data[0].astype(np.float32)


class _BlockResampler:
    """Codec frames gathered into blocks, mixed to mono and resampled by FFmpeg's
    libswresample (streaming, so blocks join seamlessly). A track has tens of thousands of
    codec frames, and per frame any NumPy or PyAV call costs more than its samples' share
    of the work: a frame only has its planes viewed; a block (2**16 samples) is converted."""

    BLOCK = 1 << 16

    def __init__(self, rate_in: int, rate_out: int) -> None:
        self.rate_in = rate_in
        self._swr = (None if rate_in == rate_out
                     else av.AudioResampler(format="flt", layout="mono", rate=rate_out))
        self.pending: list[list[np.ndarray]] = []
        self.pending_size = 0
        self.layout: tuple[str, int] | None = None  # sample format and channels of pending
        self.out: list[np.ndarray] = []

    def push(self, frame: av.AudioFrame) -> None:
        name = frame.format.name
        layout = (name, frame.layout.nb_channels)
        if layout != self.layout:
            if self.pending:
                self._process()
            self.layout = layout
        count = frame.samples * (1 if name.endswith("p") else layout[1])
        dtype = SAMPLE_DTYPES[name.rstrip("p")]
        self.pending.append([np.frombuffer(plane, dtype, count) for plane in frame.planes])
        self.pending_size += frame.samples
        if self.pending_size >= self.BLOCK:
            self._process()

    def _process(self) -> None:
        assert self.layout is not None
        name, channels = self.layout
        planar = name.endswith("p")
        planes = [np.concatenate(p) for p in zip(*self.pending, strict=True)]
        block = _to_mono(planes, planar, channels)
        self.pending, self.pending_size = [], 0
        if self._swr is None:
            self.out.append(block)
            return
        frame = av.AudioFrame.from_ndarray(block[None, :], format="flt", layout="mono")
        frame.sample_rate = self.rate_in
        self._resample(frame)

    def _resample(self, frame: av.AudioFrame | None) -> None:
        assert self._swr is not None
        self.out += [f.to_ndarray()[0] for f in self._swr.resample(frame)]

    def finish(self) -> np.ndarray:
        if self.pending:
            self._process()
        if self._swr is not None:
            self._resample(None)  # the samples still in the filter
        return np.concatenate(self.out) if self.out else np.zeros(0, np.float32)
