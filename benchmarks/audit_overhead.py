"""Audit overhead: what recording each match in the audit log adds to a MatchFingerprint call.

Two servers in this process over one catalogue (the four test fixtures), alike but for the
audit: one records every match (``server.access.Access``, as ``clipmatch serve`` does), the
other's ``record`` does nothing. Calls alternate between them (so drift in the machine's
load falls on both alike), each with the fingerprints of a 10 s excerpt of a fixture, and the
medians of the client-side and server-side times are compared. ``python -m
benchmarks.audit_overhead --calls 300`` (calls per server).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from client.sdk import ClipmatchClient
from fingerprint.audio import band_frames
from fingerprint.decode import SAMPLE_RATE, decode_audio
from index.catalog import Catalog
from server.access import ADMIN, DEFAULT_TENANT, Access, Guard
from server.app import build_server
from server.options import DEFAULT_AUTH
from tests.media import CATALOGUE, Clip, fixture


class Unaudited(Access):
    """Tokens as usual, no audit rows."""

    def record(self, *args: Any, **kwargs: Any) -> None:
        pass


def measure(calls: int, directory: Path) -> dict[str, Any]:
    catalog = Catalog(directory / "data")
    for name in CATALOGUE:
        catalog.register(fixture(name), title=name)
    frames = [band_frames(decode_audio(Clip(name, 8.0, 10.0).write(directory)), SAMPLE_RATE)
              for name in CATALOGUE]
    runs: dict[str, dict[str, list[float]]] = {}
    servers, clients, stores = [], {}, []
    try:
        for kind, store_type in (("audited", Access), ("unaudited", Unaudited)):
            (directory / kind).mkdir()
            store = store_type(directory / kind)
            stores.append(store)
            token, _ = store.create_token(DEFAULT_TENANT, ADMIN)
            server, port = build_server(catalog, "127.0.0.1:0",
                                        guard=Guard(store, directory / kind, DEFAULT_AUTH))
            server.start()
            servers.append(server)
            clients[kind] = ClipmatchClient(f"127.0.0.1:{port}", token=token)
            runs[kind] = {"client_ms": [], "server_ms": []}
        for client in clients.values():  # warm both up
            for query in frames:
                client.match_fingerprint(query)
        for i in range(calls):
            for kind, client in clients.items():
                started = time.perf_counter()
                answer = client.match_fingerprint(frames[i % len(frames)])
                runs[kind]["client_ms"].append((time.perf_counter() - started) * 1000)
                runs[kind]["server_ms"].append(answer["elapsed_ms"])
                assert answer["matches"], "every query is of a catalogue fixture"
        audited_rows = len(stores[0].query(action="match", page_size=2 * calls)[0])
    finally:
        for client in clients.values():
            client.close()
        for server in servers:
            server.stop(None)
        for store in stores:
            store.close()
        catalog.close()
    medians = {kind: {name: round(float(np.median(values)), 2) for name, values in run.items()}
               for kind, run in runs.items()}
    return {"calls_per_server": calls, "audited_match_rows": audited_rows, "median_ms": medians,
            "added_ms": {name: round(medians["audited"][name] - medians["unaudited"][name], 2)
                         for name in ("client_ms", "server_ms")}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300, help="calls per server")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="clipmatch-audit-") as tmp:
        print(json.dumps(measure(args.calls, Path(tmp)), indent=1))


if __name__ == "__main__":
    main()
