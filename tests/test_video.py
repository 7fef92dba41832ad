"""Video end to end against the real server: a video with sound is registered, then
transformed clips of it (muted, mirrored, letterboxed with subtitles, black screen with
sound) and footage that was never registered are matched over gRPC."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from client.sdk import ClipmatchClient
from index.catalog import fingerprint_media
from tests.conftest import ServerProcess
from tests.media import video_clip, video_fixture

REFERENCE = "intro_excerpt"
CLIP_START_S = 8.0
CLIP_S = 10.0


@pytest.fixture(scope="module")
def reference(server: ServerProcess) -> dict[str, Any]:
    with server.client() as client:
        return client.register(video_fixture(REFERENCE))


@pytest.fixture(scope="module")
def held_shot(server: ServerProcess) -> dict[str, Any]:
    with server.client() as client:
        return client.register(video_fixture("held_shot_tree"))


def smaller_and_brighter(image: np.ndarray) -> np.ndarray:
    """Downscaled to half size and gamma-brightened, as a low-quality re-upload is."""
    height, width = image.shape[:2]
    small = cv2.resize(image, (width // 2, height // 2), interpolation=cv2.INTER_AREA)
    return (255.0 * (small / 255.0) ** 0.7).astype(np.uint8)


def mirrored(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image[:, ::-1])


def letterboxed_with_subtitles(image: np.ndarray) -> np.ndarray:
    """Black bars above and below (the frame gets taller) and a line of burned-in text."""
    height, width = image.shape[:2]
    bar = height // 8
    framed = cv2.copyMakeBorder(image, bar, bar, 0, 0, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    for colour, thickness in (((0, 0, 0), 3), ((255, 255, 255), 1)):
        cv2.putText(framed, "Where is the other fish?", (width // 8, bar + height - 12),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, thickness, cv2.LINE_AA)
    return framed


def black(image: np.ndarray) -> np.ndarray:
    return np.zeros_like(image)


def test_registering_a_video_fingerprints_both_tracks(reference: dict[str, Any]) -> None:
    assert reference["modalities"] == ["audio", "video"]
    assert reference["duration_s"] == pytest.approx(30.0, abs=0.5)


@pytest.mark.parametrize(("picture", "sound", "modality"), [
    (smaller_and_brighter, False, "video"),
    (mirrored, False, "video"),
    (letterboxed_with_subtitles, True, "audio+video"),
    (black, True, "audio"),
], ids=["muted-smaller-brighter", "muted-mirrored", "letterbox-subtitles-with-sound",
        "black-screen-with-sound"])
def test_transformed_clip_is_found_at_its_offset(reference: dict[str, Any],
                                                 client: ClipmatchClient, tmp_path: Path,
                                                 picture: Callable[[np.ndarray], np.ndarray],
                                                 sound: bool, modality: str) -> None:
    clip = video_clip(video_fixture(REFERENCE), tmp_path / "clip.mp4", CLIP_START_S, CLIP_S,
                      picture, sound)
    matches = client.match(clip)["matches"]
    assert [m["modality"] for m in matches] == [modality]
    match = matches[0]
    assert match["reference_id"] == reference["reference_id"]
    assert match["score"] >= 0.5
    assert match["speed"] == pytest.approx(1.0, abs=0.03)
    assert match["reference_start_s"] - match["query_start_s"] == pytest.approx(CLIP_START_S,
                                                                                abs=0.5)
    assert match["query_end_s"] - match["query_start_s"] >= 0.6 * CLIP_S


def test_audio_and_video_agreeing_score_higher_than_either(reference: dict[str, Any],
                                                           client: ClipmatchClient,
                                                           tmp_path: Path) -> None:
    source = video_fixture(REFERENCE)
    both = client.match(video_clip(source, tmp_path / "both.mp4", CLIP_START_S, 6.0))
    muted = client.match(video_clip(source, tmp_path / "muted.mp4", CLIP_START_S, 6.0,
                                    sound=False))
    blind = client.match(video_clip(source, tmp_path / "blind.mp4", CLIP_START_S, 6.0, black))
    fused = both["matches"][0]
    assert fused["modality"] == "audio+video"
    assert fused["score"] > max(muted["matches"][0]["score"], blind["matches"][0]["score"])


@pytest.mark.parametrize("start_s", [4.5, 12.0, 19.0])
def test_clip_of_a_held_shot_is_placed_at_its_own_instant(held_shot: dict[str, Any],
                                                          client: ClipmatchClient,
                                                          tmp_path: Path, start_s: float) -> None:
    """30 s of one tree in the wind: every instant looks alike to the frame descriptors,
    so only the small changes between frames can say where a subtitled clip of it sits
    (checked at the middle of the match, which a small error in speed does not move)."""
    clip = video_clip(video_fixture("held_shot_tree"), tmp_path / "held.mp4", start_s, 8.0,
                      letterboxed_with_subtitles, sound=False)
    match = client.match(clip)["matches"][0]
    assert match["reference_id"] == held_shot["reference_id"]
    middle_s = (match["query_start_s"] + match["query_end_s"]) / 2
    placed_s = match["reference_start_s"] + (middle_s - match["query_start_s"]) * match["speed"]
    assert placed_s == pytest.approx(start_s + middle_s, abs=0.5)


def test_footage_not_in_the_catalogue_matches_nothing(reference: dict[str, Any],
                                                      client: ClipmatchClient) -> None:
    assert client.match(video_fixture("city_not_in_catalogue"))["matches"] == []


def test_crawler_sent_video_fingerprint_is_matched(reference: dict[str, Any],
                                                   client: ClipmatchClient,
                                                   tmp_path: Path) -> None:
    clip = video_clip(video_fixture(REFERENCE), tmp_path / "clip.mp4", CLIP_START_S, CLIP_S,
                      mirrored, sound=False)
    query = fingerprint_media(clip)
    assert query.audio is None and query.video is not None
    matches = client.match_fingerprint(video=query.video)["matches"]
    assert [(m["reference_id"], m["modality"]) for m in matches] == [
        (reference["reference_id"], "video")]


def test_weak_answers_count_only_when_both_tracks_agree() -> None:
    """Two answers below the reporting threshold, one per track, that name the same reference
    at the same offset are reported together; alone, or disagreeing, they are not."""
    from index.catalog import Match, _fuse

    def weak(modality: str, reference_start_s: float, reference_id: str = "r1") -> Match:
        return Match(reference_id, "t", "", modality, 0.35, 0.0, 10.0, reference_start_s,
                     reference_start_s + 10.0, 1.0)

    floors = {"audio": 0.5, "video": 0.5}
    agreed = _fuse([weak("audio", 30.0)], [weak("video", 30.4)], floors)
    assert [(m.modality, round(m.score, 4)) for m in agreed] == [("audio+video", 0.5775)]
    assert _fuse([weak("audio", 30.0)], [], floors) == []
    assert _fuse([weak("audio", 30.0)], [weak("video", 45.0)], floors) == []
    assert _fuse([weak("audio", 30.0)], [weak("video", 30.0, "r2")], floors) == []
