"""audfprint (Dan Ellis's landmark matcher) as an anchor, from a source checkout of
dpwe/audfprint, run by its own command line in a virtual environment of its dependencies.

Its denser setting is used (``--density 70 --fanout 8`` on both sides, ``--shifts 4`` at
query time): research/audio.md measured it well above the default on short clips."""

from __future__ import annotations

import os
import re
from pathlib import Path

from benchmarks.anchors import ANCHOR_CACHE, Answer, checkout, environment, run_tool
from benchmarks.corpus import Track

HOW_TO_GET = ("pass --audfprint PATH to a source checkout of https://github.com/dpwe/audfprint "
              "(git clone https://github.com/dpwe/audfprint; tested at cb03ba9)")
REQUIREMENTS = ("numpy", "scipy", "docopt", "joblib", "psutil")
DENSITY = ("--density", "70", "--fanout", "8")
ANSWERS = 5
LINE = re.compile(r"Matched\s+([-\d.]+) s starting at\s+([-\d.]+) s in (.+) to time\s+([-\d.]+) s "
                  r"in (.+) with\s+(\d+) of\s+(\d+) common hashes at rank\s+(\d+)")


class Audfprint:
    name = "audfprint"
    label = "audfprint (n 70, F 8, shifts 4)"

    def __init__(self, source: Path | None) -> None:
        self.script = checkout(source, "audfprint.py", HOW_TO_GET) / "audfprint.py"
        self.python = environment(REQUIREMENTS)
        self.work = ANCHOR_CACHE / "audfprint"
        self.work.mkdir(parents=True, exist_ok=True)
        self.dbase = self.work / "catalogue.pklz"
        self.keys: dict[str, str] = {}
        self.cores = str(os.cpu_count() or 1)

    def _list(self, name: str, paths: list[str]) -> Path:
        """audfprint resolves relative paths from its own folder: absolute ones only."""
        listing = self.work / name
        listing.write_text("".join(f"{Path(p).resolve()}\n" for p in paths))
        return listing

    def ingest(self, tracks: list[Track]) -> None:
        self.dbase.unlink(missing_ok=True)
        self.keys = {str(Path(t.file).resolve()): t.key for t in tracks}
        run_tool([self.python, self.script, "new", "--dbase", self.dbase, *DENSITY,
                  "--ncores", self.cores, "--list", self._list("catalogue.list", list(self.keys))])

    def index_bytes(self) -> int:
        return self.dbase.stat().st_size

    def match(self, paths: list[str]) -> dict[str, list[Answer]]:
        out = self.work / "matches.txt"
        run_tool([self.python, self.script, "match", "--dbase", self.dbase, *DENSITY,
                  "--shifts", "4", "--find-time-range", "--max-matches", str(ANSWERS),
                  "--ncores", self.cores, "--verbose", "1", "--opfile", out,
                  "--list", self._list("queries.list", paths)])
        found: dict[str, list[Answer]] = {str(Path(p).resolve()): [] for p in paths}
        for line in out.read_text().splitlines():
            hit = LINE.search(line)
            if hit is None:
                continue
            _, query_start, query, reference_time, reference, aligned, _, _ = hit.groups()
            if query in found and reference in self.keys:
                found[query].append(Answer(self.keys[reference], float(aligned),
                                           float(query_start), float(reference_time)))
        return {p: found[str(Path(p).resolve())] for p in paths}
