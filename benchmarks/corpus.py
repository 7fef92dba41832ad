"""The development corpus: real game music and Czech speech from Debian data packages.

Only package registries are reachable, so the corpus is fetched with ``apt-get download`` and
unpacked with ``dpkg -x`` into the git-ignored ``.cache/benchmarks/``. What is committed is
``benchmarks/manifest.json`` (path, duration, sha256 and role of every track), never the media.

``python -m benchmarks.corpus`` (re)builds the manifest; the benchmark only reads it and checks
that the unpacked files still hash to what it says.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "benchmarks"
DEBS = CACHE / "debs"
MEDIA = CACHE / "media"
SPEECH_REEL = CACHE / "speech_reel.wav"
MANIFEST = Path(__file__).resolve().parent / "manifest.json"

MUSIC: dict[str, str] = {
    "wesnoth-1.16-music": "usr/share/games/wesnoth/1.16/data/core/music/*.ogg",
    "supertux-data": "usr/share/games/supertux2/music/**/*.ogg",
    "hedgewars-data": "usr/share/games/hedgewars/Data/Music/*.ogg",
    "colobot-common-sounds": "usr/share/games/colobot/music/*.ogg",
    "asc-music": "usr/share/games/asc/music/*.mp3",
    "fb-music-high": "usr/share/games/frozen-bubble/snd/*.xm",
}
"""Package → glob of its music files (media.md); the rest of those packages is sound effects."""

SPEECH_PACKAGE = "fillets-ng-data-cs"
SPEECH_GLOB = "usr/share/games/fillets-ng/sound/**/*.ogg"
SPEECH_RATE = 16000
"""The speech reel is mono 16 kHz: the voice clips are 22 kHz mono Vorbis, little above 8 kHz."""

MIN_TRACK_S = 30.0
NON_CATALOGUE_TARGET_S = 30 * 60.0
"""Over the 20 min floor, so the negatives hold several whole tracks from every package."""

QUICK_CATALOGUE_TRACKS = 40

_VARIANT_SUFFIX = re.compile(r"([_-]?(old|remix|fast|map|sd|theme|\d+))+$")
"""Suffixes marking a re-arrangement, map / sudden-death version or numbered take of a piece."""


@dataclass(frozen=True)
class MediaFile:
    """A file of the corpus: a path inside an unpacked package under MEDIA."""

    package: str
    path: str

    @property
    def file(self) -> Path:
        return MEDIA / self.package / self.path

    @property
    def key(self) -> str:
        """Short stable id, used in clip cache names and results."""
        return f"{self.package}:{self.path.rsplit('/', 1)[-1]}"


@dataclass(frozen=True)
class Track(MediaFile):
    """One music file of the corpus as recorded in the manifest."""

    duration_s: float
    sha256: str
    variant_group: str
    role: str


def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    """Run a tool and fail loudly with its stderr, since a half-built corpus is worse than none."""
    done = subprocess.run(cmd, capture_output=True, **kwargs)  # type: ignore[call-overload]
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])}… failed: {done.stderr.decode(errors='replace')}")
    return done


def fetch_package(package: str) -> Path:
    """Download (once) and unpack (once) a Debian package; returns its unpacked root."""
    root = MEDIA / package
    if root.is_dir():
        return root
    DEBS.mkdir(parents=True, exist_ok=True)
    MEDIA.mkdir(parents=True, exist_ok=True)  # dpkg -x makes its target, not the parents
    debs = sorted(DEBS.glob(f"{package}_*.deb"))
    if not debs:
        print(f"apt-get download {package}", file=sys.stderr)
        download = subprocess.run(["apt-get", "download", package], cwd=DEBS, capture_output=True)
        if download.returncode != 0:  # a fresh machine has no package lists yet
            run(["apt-get", "update"])
            run(["apt-get", "download", package], cwd=DEBS)
        debs = sorted(DEBS.glob(f"{package}_*.deb"))
    partial = root.with_name(root.name + ".partial")
    run(["rm", "-rf", str(partial)])
    run(["dpkg", "-x", str(debs[-1]), str(partial)])
    partial.rename(root)
    return root


def package_version(package: str) -> str:
    """Version of the cached .deb, recorded so a changed upstream package is noticed."""
    deb = sorted(DEBS.glob(f"{package}_*.deb"))[-1]
    return run(["dpkg-deb", "-f", str(deb), "Version"]).stdout.decode().strip()


@functools.cache
def probe_duration(path: Path) -> float:
    """Container duration in seconds, as ffprobe reports it."""
    out = run(["ffprobe", "-v", "error", "-show_entries", "format=duration",
               "-of", "default=nw=1:nk=1", str(path)]).stdout.decode().strip()
    return float(out)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_pcm(path: Path) -> str:
    """Hash of the decoded samples: catches the same recording shipped in another container."""
    pcm = run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(path),
               "-ac", "1", "-ar", "22050", "-f", "s16le", "-"]).stdout
    return hashlib.sha256(pcm).hexdigest()


def variant_group(path: str) -> str:
    """Name stem shared by variants (``forest``, ``forest2``, ``forest_theme``, ``forestmap``).

    Deliberately loose: grouping two unrelated tracks only constrains the split, while missing a
    variant would put a copy of catalogue music among the negatives.
    """
    name = Path(path).stem.lower()
    return _VARIANT_SUFFIX.sub("", name) or name


def _stable_order(text: str) -> str:
    """Deterministic pseudo-random sort key, independent of Python's hash seed."""
    return hashlib.sha256(text.encode()).hexdigest()


def choose_non_catalogue(candidates: list[Track]) -> set[str]:
    """Pick whole variant groups from every package until each holds its share of the target.

    An equal share per package keeps same-composer material among the negatives for all of them;
    the single tracker module (fb-music-high) stays in the catalogue as the only one of its format.
    """
    seconds: dict[str, float] = {}
    by_package: dict[str, set[str]] = {}
    for track in candidates:
        seconds[track.variant_group] = seconds.get(track.variant_group, 0.0) + track.duration_s
        if track.package != "fb-music-high":
            by_package.setdefault(track.package, set()).add(track.variant_group)
    share = NON_CATALOGUE_TARGET_S / len(by_package)
    chosen: set[str] = set()
    for groups in by_package.values():
        taken = 0.0
        for group in sorted(groups, key=_stable_order):
            if taken >= share:
                break
            if group not in chosen:  # a group spanning packages moves whole, counted once
                chosen.add(group)
                taken += seconds[group]
    return chosen


def build_speech_reel(files: list[Path]) -> None:
    """Concatenate every voice clip, in path order, into one mono file to cut clips from."""
    listing = CACHE / "speech_reel.txt"
    listing.write_text("".join(f"file '{f}'\n" for f in files))
    partial = SPEECH_REEL.with_suffix(".partial.wav")
    run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "concat", "-safe", "0",
         "-i", str(listing), "-ac", "1", "-ar", str(SPEECH_RATE), "-c:a", "pcm_s16le",
         str(partial)])
    partial.rename(SPEECH_REEL)


def build_manifest() -> dict[str, object]:
    """Fetch every package, select music, drop short tracks and exact copies, split the roles."""
    candidates: list[Track] = []
    dropped_short: list[dict[str, object]] = []
    duplicates: list[dict[str, str]] = []
    seen: dict[str, str] = {}
    for package, pattern in MUSIC.items():
        root = fetch_package(package)
        for file in sorted(root.glob(pattern)):
            rel = file.relative_to(root).as_posix()
            name = f"{package}/{rel}"
            duration = round(probe_duration(file), 3)
            if duration < MIN_TRACK_S:
                dropped_short.append({"track": name, "duration_s": duration})
                continue
            digest, pcm = sha256_file(file), sha256_pcm(file)
            original = seen.get(digest) or seen.get(pcm)
            if original:
                duplicates.append({"track": name, "duplicate_of": original})
                continue
            seen[digest] = seen[pcm] = name
            candidates.append(Track(package, rel, duration, digest, variant_group(rel), ""))
    negatives = choose_non_catalogue(candidates)
    tracks = [replace(t, role="non_catalogue" if t.variant_group in negatives else "catalogue")
              for t in candidates]

    speech_files = sorted(fetch_package(SPEECH_PACKAGE).glob(SPEECH_GLOB))
    if not SPEECH_REEL.exists():
        build_speech_reel(speech_files)
    speech_digest = hashlib.sha256()
    for file in speech_files:
        speech_digest.update(sha256_file(file).encode())

    groups: dict[str, list[str]] = {}
    for track in tracks:
        groups.setdefault(track.variant_group, []).append(f"{track.package}/{track.path}")
    totals: dict[str, float] = {}
    for role in ("catalogue", "non_catalogue"):
        members = [t for t in tracks if t.role == role]
        totals[f"{role}_tracks"] = len(members)
        totals[f"{role}_h"] = round(sum(t.duration_s for t in members) / 3600, 3)
    return {
        "packages": {p: package_version(p) for p in [*MUSIC, SPEECH_PACKAGE]},
        "min_track_s": MIN_TRACK_S,
        "totals": totals,
        "tracks": [asdict(t) for t in tracks],
        "dropped_short": dropped_short,
        "duplicates": duplicates,
        "variant_groups": {g: m for g, m in sorted(groups.items()) if len(m) > 1},
        "speech": {"package": SPEECH_PACKAGE, "glob": SPEECH_GLOB, "files": len(speech_files),
                   "duration_s": round(probe_duration(SPEECH_REEL), 3),
                   "sha256_of_file_hashes": speech_digest.hexdigest()},
    }


def ensure_media() -> None:
    """Make sure every package of the manifest is unpacked (downloads on a fresh machine)."""
    for package in [*MUSIC, SPEECH_PACKAGE]:
        fetch_package(package)
    if not SPEECH_REEL.exists():
        build_speech_reel(sorted((MEDIA / SPEECH_PACKAGE).glob(SPEECH_GLOB)))


def load_tracks(verify: bool = True) -> list[Track]:
    """Tracks of the committed manifest; with ``verify``, fail if a cached file changed."""
    manifest = json.loads(MANIFEST.read_text())
    tracks = [Track(**t) for t in manifest["tracks"]]
    if verify:
        ensure_media()
        changed = [t.key for t in tracks if not t.file.is_file() or sha256_file(t.file) != t.sha256]
        if changed:
            raise RuntimeError(f"cached media differs from benchmarks/manifest.json: {changed[:5]}")
    return tracks


def quick_catalogue(tracks: list[Track]) -> list[Track]:
    """A fixed pseudo-random subset of the catalogue, spread over packages, for ``--quick``."""
    catalogue = [t for t in tracks if t.role == "catalogue"]
    return sorted(catalogue, key=lambda t: _stable_order(t.sha256))[:QUICK_CATALOGUE_TRACKS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.parse_args()
    manifest = build_manifest()
    MANIFEST.write_text(json.dumps(manifest, indent=1) + "\n")
    print(json.dumps({k: manifest[k] for k in ("totals", "dropped_short", "duplicates",
                                               "variant_groups")}, indent=1))


def readable(path: Path) -> bool:
    """Whether PyAV (clipmatch's decoder) opens the file: the grids leave out the tracks it
    cannot (tracker modules), and so does every comparison, for every system."""
    import av

    try:
        with av.open(str(path)):
            return True
    except av.error.FFmpegError:
        return False


if __name__ == "__main__":
    main()
