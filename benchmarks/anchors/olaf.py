"""Olaf (Joren Six's landmark matcher, C core and Zig command line) as an anchor, from a source
checkout of JorenSix/Olaf, built with the Zig compiler from PyPI's ``ziglang``."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from benchmarks.anchors import (
    ANCHOR_CACHE,
    Answer,
    checkout,
    directory_bytes,
    environment,
    run_tool,
)
from benchmarks.corpus import Track

HOW_TO_GET = ("pass --olaf PATH to a source checkout of https://github.com/JorenSix/Olaf "
              "(git clone https://github.com/JorenSix/Olaf; tested at e5d89fb)")
ZIG = "ziglang==0.15.2"
"""The version the checkout's .zigversion names."""
EXTENSIONS = [".wav", ".ogg", ".mp3", ".flac", ".m4a", ".opus", ".xm", ".it", ".mod", ".s3m"]


def build(checkout: Path) -> Path:
    """``zig build -Doptimize=ReleaseFast`` in the checkout, once; returns the olaf binary."""
    binary = checkout / "zig-out" / "bin" / "olaf"
    if binary.exists():
        return binary
    python = environment((ZIG,))
    run_tool([python, "-m", "ziglang", "build", "-Doptimize=ReleaseFast"], cwd=checkout)
    return binary


class Olaf:
    name = "olaf"
    label = "Olaf (defaults)"

    def __init__(self, source: Path | None) -> None:
        self.binary = build(checkout(source, "build.zig", HOW_TO_GET))
        self.home = ANCHOR_CACHE / "olaf-home"
        self.db = self.home / ".olaf" / "db"
        self.keys: dict[str, str] = {}

    def _run(self, *args: str) -> str:
        """Olaf reads ~/.olaf/olaf_config.json; its default db path is not expanded by LMDB,
        so the config names absolute folders (research/audio.md)."""
        env = {**os.environ, "HOME": str(self.home)}
        return run_tool([self.binary, *args], env=env).stdout

    def ingest(self, tracks: list[Track]) -> None:
        cache = self.home / ".olaf" / "cache"
        for folder in (self.db, cache):
            if folder.exists():
                for f in folder.iterdir():
                    f.unlink()
            folder.mkdir(parents=True, exist_ok=True)
        (self.home / ".olaf" / "olaf_config.json").write_text(json.dumps({
            "db_folder": f"{self.db}/", "cache_folder": f"{cache}/",
            "allowed_audio_file_extensions": EXTENSIONS}))
        self.keys = {str(Path(t.file).resolve()): t.key for t in tracks}
        self._run("store", *self.keys)

    def index_bytes(self) -> int:
        return directory_bytes(self.db)

    def match(self, path: str) -> list[Answer]:
        """One ``olaf query`` per clip, as Olaf is used: its command line is its interface,
        so the time includes Olaf starting and opening its database."""
        query = str(Path(path).resolve())
        found = []
        for row in csv.reader(self._run("query", query).splitlines()):
            fields = [f.strip() for f in row]
            if len(fields) != 11 or fields[2] != query:
                continue
            count, reference = fields[4], fields[7]
            if count.isdigit() and int(count) > 0 and reference in self.keys:
                found.append(Answer(self.keys[reference], float(count), float(fields[5]),
                                    float(fields[9])))
        return found
