"""End to end over gRPC against the real server process, with real music excerpts."""

from __future__ import annotations

import functools
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from client.sdk import ClipmatchClient, ClipmatchError
from clipmatch.v1 import clipmatch_pb2 as pb
from clipmatch.v1 import clipmatch_pb2_grpc as pb_grpc
from fingerprint import video
from fingerprint.audio import band_frames
from fingerprint.decode import SAMPLE_RATE as LIBRARY_RATE
from fingerprint.decode import decode_audio
from tests.conftest import REPO, SERVER_COMMAND, ServerProcess
from tests.media import (
    CATALOGUE,
    SAMPLE_RATE,
    Clip,
    encode,
    fixture,
    load,
    video_only,
)

MIB = 1024 * 1024
SERVICES = {"clipmatch.v1.ReferenceService", "clipmatch.v1.MatchService"}

DEGRADED = [
    pytest.param(Clip("breaking_the_chains", 15.0, 8.0), id="clean-excerpt"),
    pytest.param(Clip("battle", 8.0, 10.0, speed=1.05), id="sped-up-5%"),
    pytest.param(Clip("knolls", 12.0, 10.0, suffix=".mp3", codec="libmp3lame",
                      bit_rate=32_000), id="mp3-32kbps"),
    pytest.param(Clip("loyalists", 5.0, 10.0, snr_db=10.0), id="noise-10dB"),
]
NOT_IN_CATALOGUE = [
    pytest.param(Clip("wanderer_not_in_catalogue", 4.0, 10.0), id="other-wesnoth-track"),
    pytest.param(Clip("speech_not_in_catalogue", 0.0, 8.0), id="speech"),
]


@pytest.fixture(scope="module")
def catalogue(server: ServerProcess) -> dict[str, dict[str, Any]]:
    """The catalogue fixtures, registered once for the module, by fixture name."""
    with server.client() as sdk:
        return {name: sdk.register(fixture(name)) for name in CATALOGUE}


def assert_found(result: dict[str, Any], clip: Clip) -> None:
    """Every match is the clip's source, at the right place and speed."""
    assert result["matches"], f"{clip} was not identified"
    assert result["elapsed_ms"] > 0
    assert result["query_duration_s"] == pytest.approx(clip.duration_s / clip.speed, abs=0.5)
    for match in result["matches"]:
        assert match["title"] == clip.title
        assert match["modality"] == "audio"
        assert 0.0 < match["score"] <= 1.0
        expected_start = clip.start_s + match["query_start_s"] * clip.speed
        assert match["reference_start_s"] == pytest.approx(expected_start, abs=1.0)
        assert match["speed"] == pytest.approx(clip.speed, abs=0.03)
        assert match["query_end_s"] <= clip.duration_s / clip.speed + 0.5


def assert_status(call: Callable[[], Any], code: str, *words: str) -> str:
    """``call`` fails with ``code`` and a message, for a person, mentioning one of ``words``."""
    with pytest.raises(ClipmatchError) as caught:
        call()
    message = caught.value.message
    assert caught.value.code == code, message
    assert "Traceback" not in message
    assert not words or any(word in message.lower() for word in words), message
    return message


def test_register_titles_with_file_name(catalogue: dict[str, dict[str, Any]],
                                         client: ClipmatchClient) -> None:
    for name, ref in catalogue.items():
        assert ref["title"] == f"{name}.ogg"
        assert ref["duration_s"] == pytest.approx(30.0, abs=0.5)
        assert ref["modalities"] == ["audio"]
        assert len(ref["content_sha256"]) == 64
        assert client.get(ref["reference_id"]) == ref


def test_same_bytes_twice_is_already_exists(catalogue: dict[str, dict[str, Any]],
                                            client: ClipmatchClient) -> None:
    message = assert_status(lambda: client.register(fixture("battle")), "ALREADY_EXISTS")
    assert catalogue["battle"]["reference_id"] in message


@pytest.mark.parametrize("clip", DEGRADED)
def test_degraded_clip_is_identified(catalogue: dict[str, dict[str, Any]],
                                     client: ClipmatchClient, tmp_path: Path,
                                     clip: Clip) -> None:
    assert_found(client.match(clip.write(tmp_path)), clip)


@pytest.mark.parametrize("clip", NOT_IN_CATALOGUE)
def test_clip_not_in_catalogue_matches_nothing(catalogue: dict[str, dict[str, Any]],
                                               client: ClipmatchClient, tmp_path: Path,
                                               clip: Clip) -> None:
    assert client.match(clip.write(tmp_path))["matches"] == []


def test_silent_query_matches_nothing(catalogue: dict[str, dict[str, Any]],
                                      client: ClipmatchClient, tmp_path: Path) -> None:
    silence = encode(tmp_path / "silence.wav", np.zeros(10 * SAMPLE_RATE, np.float32))
    assert client.match(silence)["matches"] == []


def test_upload_larger_than_message_limit(catalogue: dict[str, dict[str, Any]],
                                          client: ClipmatchClient, tmp_path: Path) -> None:
    """A whole reference as 44.1 kHz stereo WAV: bigger than gRPC's 4 MiB message limit."""
    big = encode(tmp_path / "battle-cd-quality.wav", load(fixture("battle"), 44_100), 44_100,
                 channels=2)
    assert big.stat().st_size > 4 * MIB
    assert_found(client.match(big), Clip("battle", 0.0, 30.0))


def test_match_client_computed_fingerprint(catalogue: dict[str, dict[str, Any]],
                                           client: ClipmatchClient, tmp_path: Path) -> None:
    clip = Clip("knolls", 3.0, 10.0)
    frames = band_frames(decode_audio(clip.write(tmp_path)), LIBRARY_RATE)
    assert_found(client.match_fingerprint(frames), clip)


def test_register_get_delete_big_reference(catalogue: dict[str, dict[str, Any]],
                                           client: ClipmatchClient, tmp_path: Path) -> None:
    """Register (a >4 MiB upload, with every header field), find, delete, and see it gone."""
    name = "wanderer_not_in_catalogue"
    wav = encode(tmp_path / "wanderer.wav", load(fixture(name), 48_000), 48_000,
                 codec="pcm_s32le", channels=2)
    assert wav.stat().st_size > 4 * MIB
    ref = client.register(wav, title="Still Another Wanderer", external_id="isrc:XX-000-1",
                          metadata={"composer": "Timothy Pinkham"})
    assert (ref["title"], ref["external_id"], ref["metadata"]) == (
        "Still Another Wanderer", "isrc:XX-000-1", {"composer": "Timothy Pinkham"})
    assert client.get(ref["reference_id"]) == ref
    query = Clip(name, 4.0, 10.0).write(tmp_path)
    assert [m["reference_id"] for m in client.match(query)["matches"]] == [ref["reference_id"]]

    client.delete(ref["reference_id"])
    assert_status(lambda: client.get(ref["reference_id"]), "NOT_FOUND")
    assert_status(lambda: client.delete(ref["reference_id"]), "NOT_FOUND")
    assert client.match(query)["matches"] == []
    assert ref["reference_id"] not in {r["reference_id"] for r in client.list_all()}


def test_list_pages_through_everything(catalogue: dict[str, dict[str, Any]],
                                       client: ClipmatchClient) -> None:
    seen: list[str] = []
    token = ""
    while True:
        page = client.list(page_size=3, page_token=token)
        assert len(page["references"]) <= 3
        assert page["total_count"] == len(catalogue)
        seen += [ref["reference_id"] for ref in page["references"]]
        token = page["next_page_token"]
        if not token:
            break
    assert sorted(seen) == sorted(ref["reference_id"] for ref in catalogue.values())
    assert [r["reference_id"] for r in client.list_all(page_size=1)] == seen


@pytest.mark.parametrize(("page_size", "page_token"), [(-1, ""), (1001, ""), (10, "garbage")])
def test_bad_paging_is_invalid_argument(client: ClipmatchClient, page_size: int,
                                        page_token: str) -> None:
    assert_status(lambda: client.list(page_size, page_token), "INVALID_ARGUMENT", "page")


def test_unknown_or_missing_reference_id(client: ClipmatchClient) -> None:
    assert_status(lambda: client.get("no-such-reference"), "NOT_FOUND")
    assert_status(lambda: client.delete("no-such-reference"), "NOT_FOUND")
    assert_status(lambda: client.get(""), "INVALID_ARGUMENT", "reference_id")


def test_health_and_reflection(server: ServerProcess, client: ClipmatchClient,
                               channel: grpc.Channel) -> None:
    for service in ("", *SERVICES):
        assert client.health(service) == "SERVING"
    assert_status(lambda: client.health("no.such.Service"), "NOT_FOUND")
    listed = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert listed >= {*SERVICES, "grpc.health.v1.Health",
                      "grpc.reflection.v1alpha.ServerReflection"}


@pytest.mark.parametrize(("problem", "event"), [("port-taken", "cannot_listen"),
                                                  ("data-dir-is-a-file", "cannot_open_catalog")])
def test_server_that_cannot_start_says_why(server: ServerProcess, tmp_path: Path, problem: str,
                                           event: str) -> None:
    data_dir, listen = tmp_path / "data", "127.0.0.1:0"
    if problem == "port-taken":
        listen = server.target
    else:
        data_dir.write_text("not a directory")
    result = subprocess.run([*SERVER_COMMAND, "--data-dir", str(data_dir), "--listen", listen],
                            cwd=REPO, capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert f'"event": "{event}"' in result.stderr


def _empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def _text_as_mp3(path: Path) -> Path:
    path.write_text("These are the lyrics, not the song.\n" * 40)
    return path


def _truncated(path: Path) -> Path:
    path.write_bytes(fixture("battle").read_bytes()[:1000])
    return path


def _random_bytes(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(7).bytes(64 * 1024))
    return path


BAD_MEDIA: list[Any] = [
    pytest.param("empty.mp3", _empty, ("empty",), id="empty"),
    pytest.param("cut.ogg", _truncated, ("truncated", "corrupt", "not a media"), id="truncated"),
    pytest.param("noise.bin", _random_bytes, ("not a media", "corrupt"), id="random-bytes"),
    pytest.param("lyrics.mp3", _text_as_mp3, ("not a media", "corrupt"), id="text-as-mp3"),
]


@pytest.fixture
def unchanged_catalogue(catalogue: dict[str, dict[str, Any]], server: ServerProcess,
                        client: ClipmatchClient) -> Iterator[None]:
    """The test must leave the catalogue as it found it, and the server serving."""
    before = client.list_all()
    yield
    assert client.health() == "SERVING"
    assert client.list_all() == before


@pytest.mark.usefixtures("unchanged_catalogue")
@pytest.mark.parametrize("rpc", ["register", "match"])
@pytest.mark.parametrize(("name", "make", "words"), BAD_MEDIA)
def test_bad_media_is_invalid_argument(client: ClipmatchClient, tmp_path: Path, rpc: str,
                                       name: str, make: Callable[[Path], Path],
                                       words: tuple[str, ...]) -> None:
    path = make(tmp_path / name)
    assert_status(lambda: getattr(client, rpc)(path), "INVALID_ARGUMENT", *words)


def _silence(path: Path) -> Path:
    return encode(path, np.zeros(20 * SAMPLE_RATE, np.float32))


@pytest.mark.usefixtures("unchanged_catalogue")
@pytest.mark.parametrize(("name", "make"), [("silence.wav", _silence),
                                            ("blank.mp4", video_only)],
                         ids=["silent-audio", "blank-video-without-audio"])
def test_nothing_to_fingerprint_cannot_be_a_reference(client: ClipmatchClient, tmp_path: Path,
                                                      name: str,
                                                      make: Callable[[Path], Path]) -> None:
    """Silence and blank pictures look alike in every recording: refused as references, and
    as queries simply not matched."""
    media = make(tmp_path / name)
    assert_status(lambda: client.register(media), "INVALID_ARGUMENT", "nothing to fingerprint")
    assert client.match(media)["matches"] == []


def _stream_call(channel: grpc.Channel, rpc: str, messages: list[str]) -> Any:
    """Send a hand-made stream of "header"/"chunk" messages to CreateReference or MatchClip."""
    if rpc == "CreateReference":
        method = pb_grpc.ReferenceServiceStub(channel).CreateReference
        request, header = pb.CreateReferenceRequest, pb.ReferenceHeader(filename="x.ogg")
    else:
        method = pb_grpc.MatchServiceStub(channel).MatchClip
        request, header = pb.MatchClipRequest, pb.MatchClipHeader(filename="x.ogg")
    payload = fixture("battle").read_bytes()
    stream = [request(header=header) if kind == "header" else request(chunk=payload)
              for kind in messages]
    return method(iter(stream), timeout=30)


@pytest.mark.usefixtures("unchanged_catalogue")
@pytest.mark.parametrize("rpc", ["CreateReference", "MatchClip"])
@pytest.mark.parametrize("messages", [[], ["chunk"], ["chunk", "header"],
                                      ["header", "chunk", "header"]],
                         ids=["nothing", "chunk-only", "chunk-before-header", "two-headers"])
def test_malformed_stream_is_invalid_argument(channel: grpc.Channel, rpc: str,
                                              messages: list[str]) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        _stream_call(channel, rpc, messages)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "header" in caught.value.details()


@pytest.mark.usefixtures("unchanged_catalogue")
def test_cancelled_upload_leaves_nothing_behind(server: ServerProcess,
                                                channel: grpc.Channel) -> None:
    """Cancel half-way through an upload: no reference (not even a truncated one), no spool
    file. gRPC sometimes ends a cancelled request stream as if it were complete, so this
    exercises both the early and the late way the server notices."""
    half = fixture("battle").read_bytes()[:60_000]
    filename = "cancelled-upload.ogg"
    release = threading.Event()

    def stalled_upload() -> Iterator[pb.CreateReferenceRequest]:
        yield pb.CreateReferenceRequest(header=pb.ReferenceHeader(filename=filename))
        yield pb.CreateReferenceRequest(chunk=half)
        release.wait(60)  # never a clean end of stream while the test runs

    def wait_for(condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 30
        while not condition():
            assert time.monotonic() < deadline, server.logs[-5:]
            time.sleep(0.02)

    def logged() -> list[str]:
        return [e["status"] for e in server.events("rpc") if e.get("filename") == filename]

    spool = server.data_dir / "tmp"
    call = pb_grpc.ReferenceServiceStub(channel).CreateReference.future(stalled_upload())
    try:
        wait_for(lambda: any(f.stat().st_size == len(half) for f in spool.glob("upload-*")))
        call.cancel()
        wait_for(logged)
    finally:
        release.set()
    assert logged() == ["CANCELLED"]
    assert not any(spool.glob("upload-*"))


@functools.cache
def _valid_fingerprint() -> pb.AudioFingerprint:
    """The wire fingerprint of a real clip, computed with the library as a crawler would."""
    frames = band_frames(decode_audio(fixture("knolls")), LIBRARY_RATE)
    values = frames.values[:200].astype("<f2")
    return pb.AudioFingerprint(format=frames.format, frame_rate_hz=frames.frame_rate_hz,
                               num_bands=values.shape[1], values=values.tobytes())


def _fingerprint(**overrides: Any) -> pb.AudioFingerprint:
    """A valid fingerprint with some fields overridden."""
    fingerprint = pb.AudioFingerprint()
    fingerprint.CopyFrom(_valid_fingerprint())
    for name, value in overrides.items():
        setattr(fingerprint, name, value)
    return fingerprint


def _video_fingerprint(**overrides: Any) -> pb.VideoFingerprint:
    """A well-formed video fingerprint (8 frames of 128 x 72) with some fields overridden."""
    pixels = np.random.default_rng(0).integers(0, 256, (8, 72, 128), dtype=np.uint8)
    fields = {"format": video.FORMAT, "width": 128, "height": 72, "pixels": pixels.tobytes(),
              "times": [i / 4 for i in range(8)]}
    return pb.VideoFingerprint(**{**fields, **overrides})


def _request(kind: str, overrides: dict[str, Any]) -> pb.MatchFingerprintRequest:
    if kind == "audio":
        return pb.MatchFingerprintRequest(audio=_fingerprint(**overrides))
    if kind == "video":
        return pb.MatchFingerprintRequest(video=_video_fingerprint(**overrides))
    return pb.MatchFingerprintRequest()


BAD_FINGERPRINTS = [
    pytest.param("audio", {"format": "chromaprint-v9"}, "format", id="unknown-format"),
    pytest.param("audio", {"num_bands": 0}, "num_bands", id="no-bands"),
    pytest.param("audio", {"values": b""}, "empty", id="no-frames"),
    pytest.param("audio", {"values": b"\x00" * 7}, "bytes", id="partial-frame"),
    pytest.param("audio", {"num_bands": 4, "values": np.full((10, 4), np.nan, "<f2").tobytes()},
                 "nan", id="nan-values"),
    pytest.param("audio", {"num_bands": 2, "values": np.zeros((10, 2), "<f2").tobytes()},
                 "band", id="wrong-band-count"),
    pytest.param("audio", {"frame_rate_hz": 100.0}, "rate", id="wrong-frame-rate"),
    pytest.param("audio", {"frame_rate_hz": float("nan")}, "frame_rate_hz",
                 id="nan-frame-rate"),
    pytest.param("none", {}, "no fingerprint", id="neither-audio-nor-video"),
    pytest.param("video", {"format": "pdq"}, "format", id="video-unknown-format"),
    pytest.param("video", {"height": 0}, "height", id="video-no-height"),
    pytest.param("video", {"pixels": b"\x00" * 1000}, "bytes", id="video-partial-frame"),
    pytest.param("video", {"width": 64, "height": 144}, "wide", id="video-wrong-width"),
    pytest.param("video", {"times": [0.0] * 8}, "increase", id="video-times-not-increasing"),
    pytest.param("video", {"times": [0.0, 0.25]}, "times", id="video-times-missing"),
]


@pytest.mark.parametrize(("kind", "overrides", "word"), BAD_FINGERPRINTS)
def test_bad_fingerprint_is_invalid_argument(channel: grpc.Channel, kind: str,
                                             overrides: dict[str, Any], word: str) -> None:
    request = _request(kind, overrides)
    with pytest.raises(grpc.RpcError) as caught:
        pb_grpc.MatchServiceStub(channel).MatchFingerprint(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert word in caught.value.details().lower()


def test_catalogue_survives_restart(catalogue: dict[str, dict[str, Any]],
                                    server: ServerProcess, tmp_path: Path) -> None:
    with server.client() as before_restart:
        references = before_restart.list_all()
    server.restart()
    clip = Clip("loyalists", 14.0, 10.0)
    with server.client() as after_restart:
        assert after_restart.list_all() == references
        assert_found(after_restart.match(clip.write(tmp_path)), clip)


def test_each_call_is_logged_as_one_json_line(server: ServerProcess,
                                               client: ClipmatchClient) -> None:
    client.match(fixture("wanderer_not_in_catalogue"))
    with pytest.raises(ClipmatchError):
        client.get("no-such-reference")
    deadline = time.monotonic() + 10
    while len(server.events("rpc")) < 2 or server.events("rpc")[-1]["method"] != "GetReference":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    match, get = server.events("rpc")[-2:]
    assert match.items() >= {"method": "MatchClip", "status": "OK", "matches": 0,
                             "filename": "wanderer_not_in_catalogue.ogg"}.items()
    assert get.items() >= {"method": "GetReference", "status": "NOT_FOUND",
                           "reference_id": "no-such-reference"}.items()
    for call in (match, get):
        assert call["elapsed_ms"] >= 0
        assert {"ts", "level", "peer"} <= call.keys()
