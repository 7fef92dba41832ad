"""Ingest on one core and on all of them, side by side in one run: the audio catalogue's
tracks and every film of the video corpus (with its sound) registered into fresh data
directories by ``Catalog(ingest_processes=N)``, fed by 2 N threads (longest file first), as
the server does: once with one process confined to one core, once with a process per core.

Reports for each: media hours per wall hour (x realtime), the CPU the registrations took in
every process (x realtime per core), and the wall speed-up over one core.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks import audio_grid as grid
from benchmarks.corpus import load_tracks, readable

MIN_AUDIO_H = {False: float("inf"), True: 0.3}
"""Hours of the audio catalogue registered (full mode: all of it, 6 h)."""


def register_all(files: list[Any], processes: int, cores: set[int]) -> dict[str, Any]:
    """Register ``files`` into a new data directory with ``processes`` ingest processes, this
    process and its children confined to ``cores`` (FFmpeg's video decoder would otherwise
    take a second core for its own threads, so one process is not one core)."""
    everywhere = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)  # spawned ingest processes inherit it
    try:
        return _registered(files, processes) | {"cores": len(cores)}
    finally:
        os.sched_setaffinity(0, everywhere)


def _registered(files: list[Any], processes: int) -> dict[str, Any]:
    from index.catalog import Catalog

    files = sorted(files, key=lambda f: -f.duration_s)  # longest first: no straggler at the end
    with tempfile.TemporaryDirectory(prefix="clipmatch-ingest-") as tmp:
        catalog = Catalog(Path(tmp) / "data", ingest_processes=processes)
        cpu0, wall0 = grid.cpu_seconds(), time.perf_counter()
        with ThreadPoolExecutor(2 * processes) as pool:
            durations = list(pool.map(
                lambda f: catalog.register(str(f.file), title=f.key).duration_s, files))
        catalog.close()  # ends the pool: its processes' CPU is counted from here
        wall, cpu = time.perf_counter() - wall0, grid.cpu_seconds() - cpu0
    seconds = sum(durations)
    return {"processes": processes, "files": len(files), "media_h": round(seconds / 3600, 3),
            "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "x_realtime_wall": round(seconds / wall, 1),
            "x_realtime_per_core": round(seconds / cpu, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="about 20 min of audio")
    parser.add_argument("--write-md", action="store_true", help="regenerate BENCHMARKS.md")
    args = parser.parse_args(argv)
    from benchmarks.video_corpus import load_videos

    tracks, total = [], 0.0
    for track in (t for t in load_tracks() if t.role == "catalogue"):
        if total >= MIN_AUDIO_H[args.quick] * 3600:
            break
        if readable(track.file):
            tracks.append(track)
            total += track.duration_s
    videos = load_videos()  # catalogue and non-catalogue alike: all the real video there is
    cores = sorted(os.sched_getaffinity(0))
    runs = {}
    for kind, files in (("audio", tracks), ("video", videos)):
        runs[kind] = [register_all(files, 1, set(cores[:1])),
                      register_all(files, len(cores), set(cores))]
        for run in runs[kind]:
            run["speedup"] = round(runs[kind][0]["wall_s"] / run["wall_s"], 2)
            print(kind, run, file=sys.stderr)
    results = {**grid.run_stamp("benchmarks.ingest_scaling", argv, args.quick), "runs": runs}
    grid.save_results("ingest_scaling", results, render, args.write_md)


def render(results: dict[str, Any]) -> str:
    lines = ["| media | cores | ingest processes | files | hours | wall | x realtime (wall) | "
             "x realtime per core (CPU) | speed-up over 1 core |", "|---" * 9 + "|"]
    for kind, runs in results["runs"].items():
        lines += [f"| {kind} | {r['cores']} | {r['processes']} | {r['files']} | {r['media_h']} | "
                  f"{r['wall_s']} s | {r['x_realtime_wall']}x | {r['x_realtime_per_core']}x | "
                  f"{r['speedup']}x |" for r in runs]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
