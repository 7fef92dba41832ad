"""Concurrent clients mixing matches, registrations, listings and deletions for a while.

A real server holds the four catalogue fixtures, which nobody deletes. Each client has a
rights holder's token of its own (of the tenant that holds the fixtures) and owns some 5 s
pieces of the other fixtures (pieces of different clients never have the same
bytes) and loops until the time is up: half its calls match a 6 s excerpt of a catalogue
fixture and check the answer names it at its offset, the rest register one of its pieces,
delete one it registered (which may then be registered again), or list the catalogue and
check its own references are there exactly once and its deleted ones gone. At the end the
catalogue must hold the fixtures and every piece registered and not deleted, once each.
``python -m tests.soak --clients N --seconds S`` reports the calls, the unexpected errors
and the latency of each kind of call (``make soak``: 32 clients, 120 s).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from client.sdk import ClipmatchClient, ClipmatchError
from server.access import DEFAULT_TENANT, RIGHTS_HOLDER
from tests.conftest import ServerProcess
from tests.media import CATALOGUE, encode, excerpt, fixture, load, pieces

PIECE_S = 5.0
PIECE_STEP_S = 0.5
"""Pieces start every half second: overlapping, but never the same bytes."""


def owned_pieces(directory: Path, clients: int) -> list[list[Path]]:
    """The pieces of the non-catalogue fixtures, dealt out to ``clients``."""
    found = pieces(directory, ("wanderer_not_in_catalogue", "speech_not_in_catalogue"),
                   PIECE_S, PIECE_STEP_S)
    return [found[i::clients] for i in range(clients)]


def probes(directory: Path) -> list[tuple[str, float, Path]]:
    """(fixture title, offset, 6 s excerpt) of each catalogue fixture at three offsets."""
    found = []
    for name in CATALOGUE:
        samples = load(fixture(name))
        for start in (3.0, 11.0, 19.0):
            found.append((f"{name}.ogg", start, encode(directory / f"probe-{name}-{start:g}.wav",
                                                       excerpt(samples, start, 6.0))))
    return found


class Client(threading.Thread):
    """One client's loop of calls, its own references and what it saw go wrong."""

    def __init__(self, server: ServerProcess, token: str, seed: int, pieces: list[Path],
                 probe_set: list[tuple[str, float, Path]], catalogue: dict[str, str],
                 stop_at: float) -> None:
        super().__init__(name=f"client-{seed}")
        self.server, self.token = server, token
        self.rng, self.stop_at = np.random.default_rng(seed), stop_at
        self.spare, self.probes, self.catalogue = list(pieces), probe_set, catalogue
        self.mine: dict[str, Path] = {}  # reference_id -> piece, registered and kept
        self.deleted: set[str] = set()
        self.latency: dict[str, list[float]] = collections.defaultdict(list)
        self.errors: list[str] = []

    def run(self) -> None:
        with self.server.client(self.token) as client:
            while time.monotonic() < self.stop_at:
                kind = self.rng.choice(["match", "register", "delete", "list"],
                                       p=[0.5, 0.2, 0.15, 0.15])
                started = time.perf_counter()
                try:
                    done = getattr(self, f"call_{kind}")(client)
                except ClipmatchError as error:
                    self.errors.append(f"{kind}: {error.code} {error}")
                    continue
                if done:
                    self.latency[kind].append(time.perf_counter() - started)

    def call_match(self, client: ClipmatchClient) -> bool:
        title, start, path = self.probes[self.rng.integers(len(self.probes))]
        found = client.match(path)["matches"]
        if not found or found[0]["reference_id"] != self.catalogue[title] or abs(
                found[0]["reference_start_s"] - start) > 1.0:
            self.errors.append(f"match: {path.name} answered {found[:1]}")
        return True

    def call_register(self, client: ClipmatchClient) -> bool:
        if not self.spare:
            return False
        piece = self.spare.pop(self.rng.integers(len(self.spare)))
        self.mine[client.register(piece, title=piece.name)["reference_id"]] = piece
        return True

    def call_delete(self, client: ClipmatchClient) -> bool:
        if not self.mine:
            return False
        reference_id = list(self.mine)[self.rng.integers(len(self.mine))]
        client.delete(reference_id)
        self.deleted.add(reference_id)
        self.spare.append(self.mine.pop(reference_id))  # its bytes may be registered again
        return True

    def call_list(self, client: ClipmatchClient) -> bool:
        ids = [r["reference_id"] for r in client.list_all()]
        if len(ids) != len(set(ids)):
            self.errors.append("list: a reference is listed twice")
        missing = set(self.mine) - set(ids)
        if missing or set(ids) & self.deleted:
            self.errors.append(f"list: {len(missing)} of mine missing, "
                               f"{len(set(ids) & self.deleted)} deleted ones listed")
        return True


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = 1000 * np.asarray(seconds)
    return {"n": len(ms), **{f"p{q}_ms": round(float(np.percentile(ms, q)), 1)
                             for q in (50, 95, 99)}} if len(ms) else {"n": 0}


def run(clients: int, seconds: float, directory: Path) -> dict[str, Any]:
    server = ServerProcess(directory / "data")
    server.start()
    try:
        with server.client() as admin:
            catalogue = {f"{name}.ogg": admin.register(fixture(name))["reference_id"]
                         for name in CATALOGUE}
            tokens = [admin.create_token(DEFAULT_TENANT, RIGHTS_HOLDER, f"soak client {i}")["token"]
                      for i in range(clients)]
        dealt, probe_set = owned_pieces(directory, clients), probes(directory)
        stop_at = time.monotonic() + seconds
        threads = [Client(server, tokens[i], i, dealt[i], probe_set, catalogue, stop_at)
                   for i in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        with server.client() as client:
            listed = [r["reference_id"] for r in client.list_all()]
        expected = set(catalogue.values()).union(*(t.mine for t in threads))
        latency = collections.defaultdict(list)
        for thread in threads:
            for kind, values in thread.latency.items():
                latency[kind] += values
        report = {
            "clients": clients, "seconds": seconds,
            "calls": {kind: percentiles(values) for kind, values in sorted(latency.items())},
            "errors": [e for t in threads for e in t.errors],
            "final_references": len(listed), "expected_references": len(expected),
            "lost": len(expected - set(listed)), "unexpected": len(set(listed) - expected),
            "duplicated": len(listed) - len(set(listed))}
    finally:
        assert server.stop() == 0
    report["crashed_calls"] = len(server.events("rpc_crashed"))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=120.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="clipmatch-soak-") as tmp:
        report = run(args.clients, args.seconds, Path(tmp))
    print(json.dumps(report, indent=1))
    bad = (report["errors"] or report["lost"] or report["unexpected"] or report["duplicated"]
           or report["crashed_calls"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
