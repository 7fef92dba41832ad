"""The server's limits over gRPC, against a real server started with small ones: a request
past a limit is RESOURCE_EXHAUSTED with the limit in its message, and nothing is stored."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from client.sdk import ClipmatchClient
from fingerprint.audio import band_frames
from fingerprint.decode import SAMPLE_RATE as LIBRARY_RATE
from fingerprint.decode import decode_audio
from tests.conftest import SERVER_COMMAND, ServerProcess
from tests.media import Clip, encode, fixture, load
from tests.test_service import assert_found, assert_status

LIMITS = ("--max-reference-mb", "3", "--max-clip-mb", "1", "--max-clip-seconds", "6")


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClipmatchClient]:
    server = ServerProcess(tmp_path_factory.mktemp("data"), (*SERVER_COMMAND, *LIMITS))
    server.start()
    with server.client() as client:
        client.register(fixture("knolls"))
        yield client
    assert server.stop() == 0
    assert not server.events("rpc_crashed"), server.events("rpc_crashed")


def test_clip_within_the_limits_matches(limited: ClipmatchClient, tmp_path: Path) -> None:
    clip = Clip("knolls", 4.0, 5.0)
    assert_found(limited.match(clip.write(tmp_path)), clip)


def test_clip_longer_than_the_limit_is_resource_exhausted(limited: ClipmatchClient,
                                                          tmp_path: Path) -> None:
    """8 s of audio is a small upload (0.7 MB of WAV) but longer than the 6 s allowed."""
    path = Clip("knolls", 4.0, 8.0).write(tmp_path)
    assert path.stat().st_size < 1_000_000
    assert_status(lambda: limited.match(path), "RESOURCE_EXHAUSTED", "6 s")
    frames = band_frames(decode_audio(path), LIBRARY_RATE)
    assert_status(lambda: limited.match_fingerprint(frames), "RESOURCE_EXHAUSTED", "6 s")


def test_uploads_larger_than_the_limits_are_resource_exhausted(limited: ClipmatchClient,
                                                               tmp_path: Path) -> None:
    """A 6 s clip as 44.1 kHz stereo WAV (1.06 MB) is over the 1 MB clip limit; the whole
    reference as such WAV (5 MB) is over the 3 MB reference limit and is not stored."""
    samples = load(fixture("knolls"), 44_100)
    clip = encode(tmp_path / "clip.wav", samples[: 6 * 44_100], 44_100, channels=2)
    assert_status(lambda: limited.match(clip), "RESOURCE_EXHAUSTED", "1 mb", "--max-clip-mb")
    big = encode(tmp_path / "reference.wav", samples, 44_100, channels=2)
    assert big.stat().st_size > 3_000_000
    before = limited.list()["total_count"]
    assert_status(lambda: limited.register(big, title="too big"), "RESOURCE_EXHAUSTED",
                  "3 mb", "--max-reference-mb")
    assert limited.list()["total_count"] == before
