"""Power cuts during a bulk ingest: the server killed with SIGKILL at a random moment.

Each trial starts a real server over a fresh data directory and registers 10 s pieces of
the music fixtures (all different, none overlapping) from two client threads, kills the
server at a random moment, starts it again and checks that every registration it had
acknowledged is there with its record and can be matched, that every reference it lists can
be matched (nothing half-written is visible), and, with the server stopped, that
``Catalog.check`` finds nothing wrong. ``python -m tests.crash --trials N`` runs N trials
(``make crash``: 50) and reports what each found.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from client.sdk import ClipmatchClient, ClipmatchError
from index.catalog import Catalog
from tests.conftest import ServerProcess
from tests.media import CATALOGUE, encode, excerpt, load, pieces

PIECE_S = 10.0
KILL_DELAY_S = 0.05
"""The kill comes a random moment up to this long after a random number of acknowledged
registrations (from none to all but one): a registration takes about a tenth of a second
here, so the kill lands in uploads, fingerprinting and commits alike."""


def matched(client: ClipmatchClient, piece: Path, reference_id: str, directory: Path) -> bool:
    """Whether the middle 6 s of ``piece`` is found as ``reference_id``, at its offset."""
    clip = encode(directory / f"probe-{piece.name}", excerpt(load(piece), 2.0, 6.0))
    found = client.match(clip)["matches"]
    return bool(found) and found[0]["reference_id"] == reference_id and abs(
        found[0]["reference_start_s"] - 2.0) < 1.0


def trial(seed: int, media: list[Path], directory: Path) -> dict[str, Any]:
    """One kill during an ingest, and what survived it."""
    rng = np.random.default_rng(seed)
    order = [media[i] for i in rng.permutation(len(media))]
    server = ServerProcess(directory / "data")
    server.start()
    acknowledged: dict[str, Path] = {}
    refused: list[str] = []
    progress = threading.Condition()

    def register(share: list[Path]) -> None:
        with server.client() as client:
            for piece in share:
                try:
                    reference = client.register(piece, title=piece.name)
                except ClipmatchError as error:
                    if error.code in ("UNAVAILABLE", "CANCELLED", "UNKNOWN"):
                        return  # the server is gone
                    refused.append(f"{piece.name}: {error.code} {error}")
                    continue
                with progress:
                    acknowledged[reference["reference_id"]] = piece
                    progress.notify_all()

    threads = [threading.Thread(target=register, args=(order[i::2],)) for i in range(2)]
    for thread in threads:
        thread.start()
    kill_at = int(rng.integers(0, len(media)))
    with progress:
        progress.wait_for(lambda: len(acknowledged) >= kill_at or not any(
            thread.is_alive() for thread in threads), timeout=120)
    time.sleep(float(rng.uniform(0.0, KILL_DELAY_S)))
    server.kill()
    for thread in threads:
        thread.join()
    server.start()
    by_title = {piece.name: piece for piece in media}
    with server.client() as client:
        listed = {r["reference_id"]: r for r in client.list_all()}
        lost = [rid for rid in acknowledged if rid not in listed]
        unmatchable = [rid for rid, r in listed.items()
                       if r["title"] not in by_title
                       or not matched(client, by_title[r["title"]], rid, directory)]
    assert server.stop() == 0
    catalog = Catalog(directory / "data")
    problems = catalog.check()["problems"]
    catalog.close()
    return {"seed": seed, "kill_after_acknowledged": kill_at,
            "acknowledged": len(acknowledged), "listed": len(listed), "lost": lost,
            "unmatchable": unmatchable, "refused": refused, "check_problems": problems}


def run(trials: int, directory: Path) -> dict[str, Any]:
    media = pieces(directory, (*CATALOGUE, "wanderer_not_in_catalogue"), PIECE_S, PIECE_S)
    results = []
    for seed in range(trials):
        trial_dir = directory / f"trial-{seed}"
        trial_dir.mkdir()
        results.append(trial(seed, media, trial_dir))
    return {"trials": trials,
            "acknowledged": sum(r["acknowledged"] for r in results),
            "lost": sum(len(r["lost"]) for r in results),
            "unmatchable": sum(len(r["unmatchable"]) for r in results),
            "damaged_data_dirs": sum(bool(r["check_problems"]) for r in results),
            "refused": sorted({line for r in results for line in r["refused"]}),
            "results": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=50, help="kills (default %(default)s)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="clipmatch-crash-") as tmp:
        report = run(args.trials, Path(tmp))
    print(json.dumps(report, indent=1))
    return 0 if not (report["lost"] or report["unmatchable"] or report["damaged_data_dirs"]
                     ) else 1


if __name__ == "__main__":
    sys.exit(main())
