"""audfprint (Dan Ellis's landmark matcher) as an anchor, from a source checkout of
dpwe/audfprint, in a virtual environment of its dependencies: its command line builds the
database (on every core); clips are matched by a worker that sets audfprint up from the same
command-line options (its own ``setup_analyzer`` and ``setup_matcher``) and loads the database
once, as a service built on audfprint would.

Its denser setting is used (``--density 70 --fanout 8`` on both sides, ``--shifts 4`` at
query time): research/audio.md measured it well above the default on short clips."""

from __future__ import annotations

import os
import re
from pathlib import Path

from benchmarks.anchors import ANCHOR_CACHE, Answer, Worker, checkout, environment, run_tool
from benchmarks.corpus import Track

HOW_TO_GET = ("pass --audfprint PATH to a source checkout of https://github.com/dpwe/audfprint "
              "(git clone https://github.com/dpwe/audfprint; tested at cb03ba9)")
REQUIREMENTS = ("numpy", "scipy", "docopt", "joblib", "psutil")
DENSITY = ("--density", "70", "--fanout", "8")
ANSWERS = 5
MATCHER = """
import json, sys
replies, sys.stdout = sys.stdout, sys.stderr  # audfprint prints progress to stdout
sys.path.insert(0, sys.argv[1])
import audfprint, docopt, hash_table
args = docopt.docopt(audfprint.USAGE, argv=sys.argv[2:])
args["--maxtimebits"] = hash_table._bitsfor(int(args["--maxtime"]))
analyzer, matcher = audfprint.setup_analyzer(args), audfprint.setup_matcher(args)
table = hash_table.HashTable(args["--dbase"])
for line in sys.stdin:
    msgs = matcher.file_match_to_msgs(analyzer, table, line.rstrip("\\n"))
    replies.write(json.dumps(msgs) + "\\n")
    replies.flush()
"""
LINE = re.compile(r"Matched\s+([-\d.]+) s starting at\s+([-\d.]+) s in (.+) to time\s+([-\d.]+) s "
                  r"in (.+) with\s+(\d+) of\s+(\d+) common hashes at rank\s+(\d+)")


class Audfprint:
    name = "audfprint"
    label = "audfprint (n 70, F 8, shifts 4)"

    def __init__(self, source: Path | None) -> None:
        self.source = checkout(source, "audfprint.py", HOW_TO_GET)
        self.script = self.source / "audfprint.py"
        self.matcher: Worker | None = None
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

    def match(self, path: str) -> list[Answer]:
        if self.matcher is None:
            self.matcher = Worker(self.python, MATCHER, str(self.source), "match", "--dbase",
                                  str(self.dbase), *DENSITY, "--shifts", "4",
                                  "--find-time-range", "--max-matches", str(ANSWERS),
                                  "--verbose", "1")
        found = []
        for line in self.matcher.ask(str(Path(path).resolve())):
            hit = LINE.search(line)
            if hit is None:
                continue
            _, query_start, _, reference_time, reference, aligned, _, _ = hit.groups()
            if reference in self.keys:
                found.append(Answer(self.keys[reference], float(aligned), float(query_start),
                                    float(reference_time)))
        return found
