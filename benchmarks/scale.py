"""The catalogue grown to hundreds and thousands of hours: the real catalogue padded with
distractors (``benchmarks.distractors``: real music made into different music, real footage
into different footage), and at each size the real query grid's accuracy, match latency,
build time, memory, index bytes per hour and start-up time after a restart, measured in one
run on one machine.

Queries are a fixed sample of the audio (or video) grid's clips (every row, catalogue and
non-catalogue), matched in-process one at a time: from their fingerprints (what a crawler
sends, ``Catalog.match``) and from their bytes (``Catalog.match_media``, decoding included).
The video corpus is minutes long, so the video catalogue grows only as far as its
distractor variants reach (a few hours): far enough to train its index and measure its
size per hour, and how search time grows with it.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmarks import audio_grid as grid
from benchmarks import clips as clipsets
from benchmarks import distractors
from benchmarks.corpus import CACHE, Track, readable

SIZES_H = {"audio": {False: (100.0, 1000.0, 2000.0), True: (20.0,)},
           "video": {False: (1.0, 2.0, 4.0), True: (1.0,)}}
QUERY_SAMPLE = {"audio": {False: 6, True: 12}, "video": {False: 3, True: 6}}
"""Every n-th clip of the grid is a query (the grid's clips are ordered by row and length,
so every row keeps its share)."""
BANDS = CACHE / "scale" / "bands"
"""Band frames of every corpus track, computed once: what the distractors are made from."""
FRAMES = CACHE / "scale" / "frames"
"""Grey frames of every corpus video, decoded once."""
LATENCY_LENGTH_S = 10.0


def rss_mb() -> float:
    """Resident memory of this process now (not its peak: sizes are measured in turn)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def _cached_arrays(items: list[Any], folder: Path, compute: Any, desc: str) -> list[Path]:
    """Each item's array (``compute(item)``; None leaves the item out) as a .npy file in
    ``folder``, named by the item's sha256 and computed once."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for item in tqdm(items, desc=desc, unit="file"):
        path = folder / f"{item.sha256[:16]}.npy"
        if not path.exists():
            values = compute(item)
            if values is None:
                continue
            np.save(path.with_suffix(".tmp.npy"), values)
            path.with_suffix(".tmp.npy").replace(path)
        paths.append(path)
    return paths


def band_sources(tracks: list[Track]) -> list[Path]:
    """Each readable corpus track's band frames as float16, computed once."""
    from fingerprint.audio import band_frames
    from fingerprint.decode import decode_audio

    return _cached_arrays(
        tracks, BANDS, lambda t: band_frames(decode_audio(str(t.file))).values.astype(
            np.float16) if readable(t.file) else None, "band frames of the corpus")


def frame_sources(videos: list[Any]) -> list[Path]:
    """Each corpus video's grey frames (uint8), decoded once."""
    from fingerprint.decode import decode_media

    return _cached_arrays(videos, FRAMES,
                          lambda v: decode_media(str(v.file), audio=False).frames,
                          "frames of the corpus")


_SOURCES: list[np.ndarray] = []


def _load_sources(paths: list[Path]) -> None:
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    _SOURCES[:] = [np.load(p, mmap_mode="r") for p in paths]


def _make(variant: Any) -> tuple[Any, float, Any, str]:
    return variant, *variant.fingerprints(_SOURCES)


def grow(catalog: Any, sources: list[Path], variants: Iterator[Any],
         target_h: float, hours: float) -> tuple[float, int]:
    """Register distractors (made on every core) until the catalogue holds ``target_h`` or
    the variants run out; returns the hours reached and how many were added."""
    added = 0
    with ProcessPoolExecutor(os.cpu_count() or 1, initializer=_load_sources,
                             initargs=(sources,)) as pool:
        progress = tqdm(total=max(target_h - hours, 0.0), desc=f"distractors to {target_h:g} h",
                        unit="h", bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} h [{elapsed}]")
        while hours < target_h and (batch := list(itertools.islice(variants, 64))):
            for variant, duration_s, fingerprints, digest in pool.map(_make, batch):
                if not any(len(fp.vectors) for fp in fingerprints.values()):
                    continue  # blank throughout: registration would refuse it too
                catalog.register_fingerprints(fingerprints, title=variant.name,
                                              duration_s=duration_s, content_sha256=digest)
                hours += duration_s / 3600
                added += 1
                progress.update(min(duration_s / 3600, progress.total - progress.n))
        progress.close()
    return hours, added


def measure(catalog: Any, queries: list[tuple[clipsets.Clip, Any]], refs: dict[str, str],
            hours: float, repeat: Any) -> dict[str, Any]:
    """Accuracy, latency and memory against the catalogue as it stands. The
    clips sent as bytes are matched in a pass of their own, after the others: matched
    straight after the same clip's fingerprints, they would find the references it needs
    already in the verification cache."""
    outcomes, from_bytes = [], []
    for clip, query in tqdm(queries, desc="match", unit="clip"):
        start = time.perf_counter()
        matches = catalog.match(query)
        elapsed = time.perf_counter() - start
        verdict, top = grid.judge(clip, matches, refs, repeat)
        outcomes.append(grid.Outcome(clip, verdict, None if top is None else asdict(top),
                                     elapsed))
    for clip, _ in queries:
        if clip.role == "catalogue" and clip.length_s == LATENCY_LENGTH_S:
            start = time.perf_counter()
            catalog.match_media(clip.path)
            from_bytes.append(time.perf_counter() - start)
    catalogue = [o for o in outcomes if o.clip.role == "catalogue"]
    ten = [o.elapsed_s for o in catalogue if o.clip.length_s == LATENCY_LENGTH_S]
    right = sum(o.verdict in ("exact", "repeat") for o in catalogue)
    return {"hours": round(hours, 1),
            "title_offset_pct": round(100 * right / max(len(catalogue), 1), 1),
            "catalogue_clips": len(catalogue),
            "false_matches": sum(o.verdict == "false" for o in outcomes),
            "negative_clips": len(outcomes) - len(catalogue),
            "fingerprint_ms": latency(ten), "bytes_ms": latency(from_bytes),
            "rss_mb": rss_mb()}


def latency(seconds: list[float]) -> dict[str, float]:
    ms = 1000 * np.asarray(seconds)
    return {f"p{q}": round(float(np.percentile(ms, q)), 1) for q in (50, 95, 99)} if len(
        ms) else {}


def planned(modality: str, quick: bool) -> tuple[list[Any], list[clipsets.Clip], list[Path],
                                                Iterator[Any], Any]:
    """What a run of ``modality`` needs: the real catalogue, the query clips, the distractors'
    source files, the distractor variants in order, and how offsets repeat (audio only)."""
    sample = QUERY_SAMPLE[modality][quick]
    if modality == "audio":
        tracks, catalogue, clips = grid.planned("eval", False)
        catalogue = [t for t in catalogue if readable(t.file)]
        sources = band_sources(tracks)
        variants = iter(distractors.plan(len(sources), 200_000))
        repeat = grid.is_repeat
    else:
        from benchmarks import video_grid
        from benchmarks.corpus import fetch_package
        from benchmarks.video_corpus import load_videos
        from benchmarks.video_degrade import FONT

        videos = load_videos()
        catalogue = [v for v in videos if v.role == "catalogue"]
        clips = video_grid.plan("eval", False, videos)
        video_grid.materialise(clips[::sample], fetch_package("fonts-nanum") / FONT)
        sources = frame_sources(videos)
        variants = iter(distractors.video_plan(len(sources)))
        repeat = None
    clips = [c for c in clips[::sample]
             if c.track in {t.key for t in catalogue} or c.role != "catalogue"]
    return catalogue, clips, sources, variants, repeat


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modality", choices=("audio", "video"), default="audio",
                        help="which catalogue grows (default audio)")
    parser.add_argument("--quick", action="store_true", help="one size, fewer clips")
    parser.add_argument("--sizes", help="comma-separated catalogue hours (default audio "
                        f"{','.join(f'{s:g}' for s in SIZES_H['audio'][False])}, video "
                        f"{','.join(f'{s:g}' for s in SIZES_H['video'][False])})")
    parser.add_argument("--data-dir", type=Path, help="keep the catalogue here (default: a "
                        "temporary folder, removed at the end)")
    parser.add_argument("--write-md", action="store_true", help="regenerate BENCHMARKS.md")
    args = parser.parse_args(argv)
    sizes = ([float(s) for s in args.sizes.split(",")] if args.sizes
             else list(SIZES_H[args.modality][args.quick]))
    from index.catalog import Catalog, fingerprint_media

    catalogue, clips, sources, variants, repeat = planned(args.modality, args.quick)
    queries = [(c, fingerprint_media(c.path)) for c in tqdm(clips, desc="queries", unit="clip")]
    temporary = tempfile.TemporaryDirectory(prefix="clipmatch-scale-")
    data_dir = args.data_dir or Path(temporary.name) / "data"
    index_dir = data_dir / "index" / args.modality
    catalog = Catalog(data_dir)
    refs, costs = grid.ingest(catalog, catalogue)
    hours = costs["audio_h"]  # hours of media registered, whichever tracks it has
    rows, total_added, added = [], 0, 0
    for size in [0.0, *sizes]:
        start = time.perf_counter()
        if size:
            hours, added = grow(catalog, sources, variants, size, hours)
            catalog.wait_for_index()
        build_s = time.perf_counter() - start
        total_added += added
        row = {"distractors": total_added, "build_s": round(build_s, 1),
               **measure(catalog, queries, refs, hours, repeat)}
        catalog.close()  # writes the fresh segment too: the index is then all on disk
        row["index_mb_per_h"] = round(sum(p.stat().st_size for pattern in grid.INDEX_PATTERNS
                                          for p in index_dir.glob(pattern)) / hours / 1e6, 3)
        start = time.perf_counter()
        catalog = Catalog(data_dir)
        catalog.match(queries[0][1])
        row["restart_s"] = round(time.perf_counter() - start, 1)
        rows.append(row)
        print(row, file=sys.stderr)
        if size and added == 0:
            break  # the distractor variants ran out
    catalog.close()
    results = {**grid.run_stamp("benchmarks.scale", argv, args.quick),
               "modality": args.modality, "queries": len(queries),
               "catalogue_tracks": len(catalogue), "distractor_sources": len(sources),
               "rows": rows}
    grid.save_results("scale" if args.modality == "audio" else "scale_video", results, render,
                      args.write_md)
    temporary.cleanup()


def render(results: dict[str, Any]) -> str:
    modality = results.get("modality", "audio")
    kind = {"audio": "tracks", "video": "videos"}[modality]
    lines = [f"{results['queries']} queries from the {modality} grid's eval clips (every "
             f"{QUERY_SAMPLE[modality][results['mode'] == 'quick']}th); the first row is the "
             f"real catalogue alone ({results['catalogue_tracks']} {kind}); distractors made "
             f"from {results['distractor_sources']} corpus {kind}.", "",
             "| hours | distractors | % title + offset | false matches | 10 s clip from "
             "fingerprints p50 / p95 / p99 | from bytes p50 / p95 / p99 | build | RSS | "
             f"{modality} index MB/h | restart |", "|---" * 10 + "|"]
    for r in results["rows"]:
        fp, by = r["fingerprint_ms"], r["bytes_ms"]
        lines.append(
            f"| {r['hours']:g} | {r['distractors']} | {r['title_offset_pct']} | "
            f"{r['false_matches']} of {r['negative_clips']} | "
            f"{fp.get('p50')} / {fp.get('p95')} / {fp.get('p99')} ms | "
            f"{by.get('p50')} / {by.get('p95')} / {by.get('p99')} ms | {r['build_s']:g} s | "
            f"{r['rss_mb']:g} MB | {r['index_mb_per_h']} | {r.get('restart_s', '–')} s |")
    if modality == "audio" and (projected := projection(results["rows"])) is not None:
        lines += ["", f"Resident memory grows by {projected['mb_per_h']:g} MB per hour of "
                  f"reference between the two largest sizes; at that rate 10,000 h would "
                  f"take {projected['gb_at_10000_h']:g} GB."]
    return "\n".join(lines) + "\n"


def projection(rows: list[dict[str, Any]], hours: float = 10_000.0) -> dict[str, float] | None:
    """Resident memory at ``hours``, extrapolated on the line through the two largest sizes
    measured (memory per hour is what grows; the fixed part is the libraries)."""
    if len(rows) < 2:
        return None
    small, large = sorted(rows, key=lambda r: r["hours"])[-2:]
    rate = (large["rss_mb"] - small["rss_mb"]) / (large["hours"] - small["hours"])
    return {"mb_per_h": round(rate, 3),
            "gb_at_10000_h": round((large["rss_mb"] + rate * (hours - large["hours"])) / 1024,
                                   1)}


if __name__ == "__main__":
    main()
