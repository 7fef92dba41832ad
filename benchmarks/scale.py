"""The catalogue grown to hundreds and thousands of hours: the real catalogue padded with
distractors (``benchmarks.distractors``: real music made into different music, real footage
into different footage), and at each size the real query grid's accuracy, match latency,
build time, index bytes per hour, and the start-up time and resident memory of a fresh
process that opens the catalogue (a restarted service), measured in one run on one machine.
``--resume`` goes on growing a catalogue an earlier run kept (``--data-dir``): its first row
measures it as it stands, and the saved table keeps the earlier run's smaller rows, each row
naming the commit that measured it.

Queries are a fixed sample of the audio (or video) grid's clips (every row, catalogue and
non-catalogue), matched in-process one at a time (in the process that grew the catalogue;
the first row of a resumed run in a fresh one that only opened it): from their fingerprints
(what a crawler sends, ``Catalog.match``) and from their bytes (``Catalog.match_media``,
decoding included).
The video corpus is minutes long, so the video catalogue grows only as far as its
distractor variants reach (a few hours): far enough to train its index and measure its
size per hour, and how search time grows with it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
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
    """Accuracy and latency against the catalogue as it stands. The clips sent as bytes are
    matched in a pass of their own, after the others: matched straight after the same clip's
    fingerprints, they would find the pages of the references it needs in memory."""
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
            "fingerprint_ms": latency(ten), "bytes_ms": latency(from_bytes)}


def restart(data_dir: Path, clip: clipsets.Clip) -> dict[str, float]:
    """Start-up time and resident memory of a fresh process that opens the catalogue and
    matches one clip: what a restarted service needs, without the garbage the process that
    built the catalogue carries (``probe`` runs in it)."""
    out = subprocess.run([sys.executable, "-m", "benchmarks.scale", "--probe", str(data_dir),
                          clip.path], capture_output=True, text=True, check=True).stdout
    return json.loads(out.splitlines()[-1])


def probe(data_dir: Path, clip_path: str) -> None:
    from index.catalog import Catalog, fingerprint_media

    query = fingerprint_media(clip_path)
    start = time.perf_counter()
    catalog = Catalog(data_dir)
    catalog.match(query)
    restart_s = time.perf_counter() - start
    print(json.dumps({"restart_s": round(restart_s, 1), "rss_mb": rss_mb()}))
    catalog.close()


def resumed(catalog: Any) -> tuple[dict[str, str], float, int]:
    """What a kept catalogue holds: reference_id → track key of the real catalogue (the
    references registered with an external id), hours of media, and how many distractors."""
    refs, hours, distractor_count, token = {}, 0.0, 0, ""
    while True:
        page, token, _ = catalog.list(1000, token)
        for reference in page:
            hours += reference.duration_s / 3600
            if reference.external_id:
                refs[reference.reference_id] = reference.title
            else:
                distractor_count += 1
        if not token:
            return refs, hours, distractor_count


def smaller_rows(saved: Path, hours: float) -> list[dict[str, Any]]:
    """The rows of an earlier run's results for catalogues smaller than ``hours``, each
    marked with the commit that measured it: a resumed run extends that table."""
    if not saved.exists():
        return []
    results = json.loads(saved.read_text())
    return [{"commit": results["commit"], **row} for row in results["rows"]
            if row["hours"] < hours - 0.5]


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
    parser.add_argument("--resume", action="store_true", help="go on growing the catalogue "
                        "kept in --data-dir by an earlier run (its first row measures it as it "
                        "is)")
    parser.add_argument("--probe", nargs=2, metavar=("DATA_DIR", "CLIP"),
                        help=argparse.SUPPRESS)  # internal: one restart measurement (restart)
    parser.add_argument("--write-md", action="store_true", help="regenerate BENCHMARKS.md")
    args = parser.parse_args(argv)
    if args.probe:
        probe(Path(args.probe[0]), args.probe[1])
        return
    if args.resume and not (args.data_dir and (args.data_dir / "catalog.sqlite").exists()):
        parser.error("--resume needs the --data-dir of an earlier run")
    sizes = ([float(s) for s in args.sizes.split(",")] if args.sizes
             else list(SIZES_H[args.modality][args.quick]))
    from index.catalog import Catalog, fingerprint_media

    catalogue, clips, sources, variants, repeat = planned(args.modality, args.quick)
    queries = [(c, fingerprint_media(c.path)) for c in tqdm(clips, desc="queries", unit="clip")]
    temporary = tempfile.TemporaryDirectory(prefix="clipmatch-scale-")
    data_dir = args.data_dir or Path(temporary.name) / "data"
    index_dir = data_dir / "index" / args.modality
    catalog = Catalog(data_dir)
    stem = "scale" if args.modality == "audio" else "scale_video"
    earlier: list[dict[str, Any]] = []
    if args.resume:
        refs, hours, total_added = resumed(catalog)
        variants = itertools.islice(variants, total_added, None)  # the order is fixed
        earlier = smaller_rows(grid.RESULTS / f"{stem}.json", hours)
        sizes = [size for size in sizes if size > hours]
    else:
        refs, costs = grid.ingest(catalog, catalogue)
        hours = costs["audio_h"]  # hours of media registered, whichever tracks it has
        total_added = 0
    probe_clip = next(c for c, _ in queries if c.role == "catalogue")
    rows, added = [], 0
    for size in [0.0, *sizes]:
        start = time.perf_counter()
        if size:
            hours, added = grow(catalog, sources, variants, size, hours)
            catalog.wait_for_index()
        build_s = time.perf_counter() - start
        total_added += added
        row = {"commit": grid.commit(), "distractors": total_added,
               "build_s": round(build_s, 1) if size or not args.resume else None,
               **measure(catalog, queries, refs, hours, repeat)}
        catalog.close()  # writes the fresh segment too: the index is then all on disk
        row["index_mb_per_h"] = round(sum(p.stat().st_size for pattern in grid.INDEX_PATTERNS
                                          for p in index_dir.glob(pattern)) / hours / 1e6, 3)
        row |= restart(data_dir, probe_clip)
        catalog = Catalog(data_dir)
        rows.append(row)
        print(row, file=sys.stderr)
        if size and added == 0:
            break  # the distractor variants ran out
    catalog.close()
    results = {**grid.run_stamp("benchmarks.scale", argv, args.quick),
               "modality": args.modality, "queries": len(queries),
               "catalogue_tracks": len(catalogue), "distractor_sources": len(sources),
               "rows": earlier + rows}
    grid.save_results(stem, results, render, args.write_md)
    temporary.cleanup()


def render(results: dict[str, Any]) -> str:
    modality = results.get("modality", "audio")
    kind = {"audio": "tracks", "video": "videos"}[modality]
    lines = [f"{results['queries']} queries from the {modality} grid's eval clips (every "
             f"{QUERY_SAMPLE[modality][results['mode'] == 'quick']}th); the first row is the "
             f"real catalogue alone ({results['catalogue_tracks']} {kind}); distractors made "
             f"from {results['distractor_sources']} corpus {kind}.", "",
             "| hours | distractors | % title + offset | false matches | 10 s clip from "
             "fingerprints p50 / p95 / p99 | from bytes p50 / p95 / p99 | build | RSS after "
             f"restart | {modality} index MB/h | restart | commit |", "|---" * 11 + "|"]
    for r in results["rows"]:
        fp, by = r["fingerprint_ms"], r["bytes_ms"]
        lines.append(
            f"| {r['hours']:g} | {r['distractors']} | {r['title_offset_pct']} | "
            f"{r['false_matches']} of {r['negative_clips']} | "
            f"{fp.get('p50')} / {fp.get('p95')} / {fp.get('p99')} ms | "
            f"{by.get('p50')} / {by.get('p95')} / {by.get('p99')} ms | "
            f"{'–' if r['build_s'] is None else format(r['build_s'], 'g') + ' s'} | "
            f"{r['rss_mb']:g} MB | {r['index_mb_per_h']} | {r.get('restart_s', '–')} s | "
            f"{r.get('commit', results['commit'])[:7]} |")
    if modality == "audio" and (projected := projection(results["rows"])) is not None:
        lines += ["", f"Resident memory of a restarted service grows by "
                  f"{projected['mb_per_h']:g} MB per hour of reference between the two largest "
                  f"sizes; at that rate 10,000 h would take {projected['gb_at_10000_h']:g} GB."]
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
