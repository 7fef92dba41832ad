"""Conversions between the library's types and clipmatch.v1 messages."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np

from clipmatch.v1 import clipmatch_pb2 as pb
from fingerprint import video
from fingerprint.audio import FORMAT, BandFrames
from fingerprint.video import VideoFrames
from index.catalog import Match, Query, Reference
from server.access import AuditEntry, TokenInfo

MODALITIES: dict[str, int] = {
    "audio": pb.MODALITY_AUDIO,
    "video": pb.MODALITY_VIDEO,
    "audio+video": pb.MODALITY_AUDIO_VIDEO,
}


class InvalidRequest(ValueError):
    """The request itself is malformed; the message tells the caller what to fix."""


def modality(name: str) -> int:
    """The wire enum for a library modality name (unknown names stay UNSPECIFIED)."""
    return MODALITIES.get(name, pb.MODALITY_UNSPECIFIED)


def reference_message(ref: Reference) -> pb.Reference:
    fields = asdict(ref)
    fields["modalities"] = [modality(m) for m in ref.modalities]
    return pb.Reference(**fields)


def token_message(info: TokenInfo) -> pb.Token:
    return pb.Token(**asdict(info))


def audit_message(entry: AuditEntry) -> pb.AuditEntry:
    return pb.AuditEntry(**asdict(entry))


def match_message(match: Match) -> pb.Match:
    """Library and wire field names are the same; only the modality needs its enum."""
    return pb.Match(**{**asdict(match), "modality": modality(match.modality)})


def band_frames(audio: pb.AudioFingerprint) -> BandFrames:
    """Decode a wire fingerprint (little-endian float16, frames x bands) into BandFrames.

    Raises InvalidRequest for anything the library could not use, with a message that says
    what was expected, so a crawler author can fix their side without reading our code.
    """
    if audio.format != FORMAT:
        raise InvalidRequest(
            f"fingerprint format {audio.format!r} is not supported; this server reads {FORMAT!r}")
    if audio.num_bands == 0:
        raise InvalidRequest("num_bands must be positive")
    if not audio.values:
        raise InvalidRequest("the fingerprint has no frames (values is empty)")
    row_bytes = 2 * audio.num_bands
    if len(audio.values) % row_bytes:
        raise InvalidRequest(
            f"values holds {len(audio.values)} bytes, not a whole number of frames of "
            f"{audio.num_bands} float16 bands ({row_bytes} bytes each)")
    if not (np.isfinite(audio.frame_rate_hz) and audio.frame_rate_hz > 0):
        raise InvalidRequest(f"frame_rate_hz must be a positive number, got {audio.frame_rate_hz}")
    values = np.frombuffer(audio.values, dtype="<f2").reshape(-1, audio.num_bands)
    if not np.isfinite(values).all():
        raise InvalidRequest("values contain NaN or infinite numbers")
    try:
        return BandFrames(values.astype(np.float32), audio.frame_rate_hz, audio.format)
    except ValueError as exc:  # band count or frame rate the library does not use
        raise InvalidRequest(str(exc)) from exc


def video_frames(message: pb.VideoFingerprint) -> VideoFrames:
    """Decode a wire video fingerprint (uint8 frames x height x width) into VideoFrames;
    InvalidRequest, saying what was expected, for anything the library could not use."""
    if message.format != video.FORMAT:
        raise InvalidRequest(f"video fingerprint format {message.format!r} is not supported; "
                             f"this server reads {video.FORMAT!r}")
    if message.width == 0 or message.height == 0:
        raise InvalidRequest("width and height must be positive")
    frame_bytes = message.width * message.height
    if not message.pixels or len(message.pixels) % frame_bytes:
        raise InvalidRequest(
            f"pixels holds {len(message.pixels)} bytes, not a whole, non-zero number of "
            f"{message.width} x {message.height} frames ({frame_bytes} bytes each)")
    pixels = np.frombuffer(message.pixels, dtype=np.uint8).reshape(
        -1, message.height, message.width)
    if len(message.times) != len(pixels):
        raise InvalidRequest(f"times holds {len(message.times)} values for {len(pixels)} frames")
    try:
        return VideoFrames(pixels, np.asarray(message.times, dtype=np.float64), message.format)
    except ValueError as exc:  # size, order of times: what the library cannot use
        raise InvalidRequest(str(exc)) from exc


def query(request: pb.MatchFingerprintRequest) -> Query:
    """The library query a MatchFingerprintRequest carries: audio, video or both."""
    has_audio, has_video = request.HasField("audio"), request.HasField("video")
    if not (has_audio or has_video):
        raise InvalidRequest("the request carries no fingerprint: set audio, video or both")
    return Query(audio=band_frames(request.audio) if has_audio else None,
                 video=video_frames(request.video) if has_video else None)
