"""Load: N concurrent gRPC clients (1, 4, 16, 64) matching 10 s clips against the real server
while registrations run beside them; throughput and latency percentiles at each level.

The server (``python -m server``, its defaults: 8 RPC threads, one ingest process per core)
serves the real eval catalogue. Each client thread sends the audio grid's 10 s catalogue
clips as bytes (``MatchClip``: decoding on the server, as a crawler's upload) one after
another for a fixed time; one more thread registers corpus tracks that are not in the
catalogue and deletes each again, one after another, for the same time. The load generator
runs on the same machine as the server, so its own CPU (reading files, protobuf) is part of
what the cores are shared with. Each matching client is a crawler with a token of its own
(the server's per-token rate limit is per crawler); the registering thread uses the admin
token.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import audio_grid as grid
from benchmarks.corpus import readable

CLIENTS = (1, 4, 16, 64)
LEVEL_S = {False: 30.0, True: 8.0}
CLIP_LENGTH_S = 10.0


def level(target: str, admin_token: str, crawler_tokens: list[str], clients: int,
          clips: list[Any], refs: dict[str, str], registrations: list[Path], seconds: float
          ) -> dict[str, Any]:
    """``clients`` threads matching clips (with a crawler token each) and one registering
    (with the admin token), for ``seconds``."""
    from client.sdk import ClipmatchClient, ClipmatchError

    stop = time.monotonic() + seconds
    order = itertools.count()
    lock = threading.Lock()
    latencies: list[float] = []
    right = answered = 0
    errors: dict[str, int] = {}

    def matcher(token: str) -> None:
        nonlocal right, answered
        with ClipmatchClient(target, token=token) as client:
            while time.monotonic() < stop:
                clip = clips[next(order) % len(clips)]
                start = time.perf_counter()
                try:
                    response = client.match(clip.path)
                except ClipmatchError as exc:
                    with lock:
                        errors[exc.code] = errors.get(exc.code, 0) + 1
                    continue
                elapsed = time.perf_counter() - start
                verdict, _ = grid.judge(clip, [_Top(m) for m in response["matches"]], refs)
                with lock:
                    latencies.append(elapsed)
                    answered += 1
                    right += verdict == "exact"

    registered: list[float] = []

    def registrar() -> None:
        """Register each track, then delete it again (so the next level can register it)."""
        with ClipmatchClient(target, token=admin_token) as client:
            for path in itertools.cycle(registrations):
                if time.monotonic() >= stop:
                    return
                start = time.perf_counter()
                try:
                    reference = client.register(path, title=f"load:{path.name}")
                    registered.append(time.perf_counter() - start)
                    client.delete(reference["reference_id"])
                except ClipmatchError as exc:
                    with lock:
                        errors[f"register {exc.code}"] = errors.get(f"register {exc.code}", 0) + 1

    began = time.monotonic()
    with ThreadPoolExecutor(clients + 1) as pool:
        futures = [pool.submit(matcher, crawler_tokens[i]) for i in range(clients)] + [
            pool.submit(registrar)]
        for future in futures:
            future.result()
    wall = time.monotonic() - began
    ms = 1000 * np.asarray(latencies)
    return {"clients": clients, "seconds": round(wall, 1), "matches": answered,
            "matches_per_s": round(answered / wall, 2),
            **{f"p{q}_ms": round(float(np.percentile(ms, q)), 1) for q in (50, 95, 99)},
            "title_offset_pct": round(100 * right / max(answered, 1), 1),
            "registrations": len(registered),
            "registration_p50_s": round(float(np.median(registered)), 2) if registered else None,
            "errors": errors}


class _Top:
    """A match as ``grid.judge`` reads it, from the SDK's dict."""

    def __init__(self, match: dict[str, Any]) -> None:
        self.reference_id = match["reference_id"]
        self.score = match["score"]
        self.query_start_s = match["query_start_s"]
        self.reference_start_s = match["reference_start_s"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{LEVEL_S[True]:g} s per level")
    parser.add_argument("--rpc-threads", type=int, default=0,
                        help="the server's --rpc-threads (default: the server's default)")
    parser.add_argument("--write-md", action="store_true", help="regenerate BENCHMARKS.md")
    args = parser.parse_args(argv)
    from client.sdk import ClipmatchClient
    from index.catalog import Catalog
    from server.access import CRAWLER, DEFAULT_TENANT

    tracks, catalogue, clips = grid.planned("eval", False)
    catalogue = [t for t in catalogue if readable(t.file)]
    keys = {t.key for t in catalogue}
    queries = [c for c in clips if c.role == "catalogue" and c.track in keys
               and c.length_s == CLIP_LENGTH_S]
    others = [t.file for t in tracks if t.key not in keys and readable(t.file)]
    with tempfile.TemporaryDirectory(prefix="clipmatch-load-") as temporary:
        data_dir = Path(temporary) / "data"
        catalog = Catalog(data_dir)
        refs, _ = grid.ingest(catalog, catalogue)
        catalog.close()
        rows = []
        extra = ("--rpc-threads", str(args.rpc_threads)) if args.rpc_threads else ()
        with grid.serving(data_dir, *extra) as (target, admin_token):
            with ClipmatchClient(target, token=admin_token) as admin:
                crawlers = [admin.create_token(DEFAULT_TENANT, CRAWLER, f"load client {i}")["token"]
                            for i in range(max(CLIENTS))]
            for clients in CLIENTS:
                rows.append(level(target, admin_token, crawlers, clients, queries, refs, others,
                                  LEVEL_S[args.quick]))
                print(rows[-1], file=sys.stderr)
    results = {**grid.run_stamp("benchmarks.load", argv, args.quick), "clips": len(queries),
               "catalogue_tracks": len(catalogue), "rows": rows}
    grid.save_results("load", results, render, args.write_md)


def render(results: dict[str, Any]) -> str:
    lines = [f"{results['clips']} clips of 10 s (the eval grid's, every row) sent as bytes "
             f"against the {results['catalogue_tracks']}-track eval catalogue; one thread "
             "registers (and deletes again) other corpus tracks meanwhile.", "",
             "| clients | matches / s | p50 | p95 | p99 | title + offset | registrations "
             "(p50) | errors |", "|---" * 8 + "|"]
    for r in results["rows"]:
        errors = ", ".join(f"{k} {v}" for k, v in r["errors"].items()) or "0"
        lines.append(f"| {r['clients']} | {r['matches_per_s']} | {r['p50_ms']} ms | "
                     f"{r['p95_ms']} ms | {r['p99_ms']} ms | {r['title_offset_pct']} % | "
                     f"{r['registrations']} ({r['registration_p50_s']} s) | {errors} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
