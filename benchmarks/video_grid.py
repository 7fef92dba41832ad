"""Video benchmark: accuracy per (transformation x clip length), false matches, cost, latency.

The catalogue footage of ``benchmarks/video_manifest.json`` is registered (picture and sound);
muted clips of it, each transformed as a pirate would (``benchmarks.video_degrade``), are
matched in-process, and 10 s clips over gRPC for latency. Scoring is the audio grid's: the top
match is right when it names the clip's source and its offset is within 1 s; any match on
footage that is not in the catalogue is a false match. Results go to
``benchmarks/results/video_<split>[_quick].{json,md}``.

Splits: clips start in alternate 30 s blocks of every source (dev even, eval odd), so the
published eval clips never share a second of footage with the clips tuned on.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmarks import audio_grid as grid
from benchmarks.clips import Clip
from benchmarks.corpus import CACHE, fetch_package
from benchmarks.degrade import DEGRADATIONS, degrade
from benchmarks.video_corpus import Video, backgrounds, load_videos
from benchmarks.video_degrade import FONT, VIDEO_DEGRADATIONS, degrade_video

LENGTHS_S = (5.0, 10.0, 20.0)
BLOCK_S = 30.0
"""A 20 s clip at speed 1.1 covers 22 s of its source: it fits in one block."""
SEEDS = {"dev": 11, "eval": 12}
PER_CELL = {False: 12, True: 6}
NEGATIVES_PER_LENGTH = {False: 30, True: 8}
NEGATIVE_DEGRADATIONS = ("reencode", "mirror", "letterbox", "gamma", "subtitles", "pip")
QUICK_DEGRADATIONS = ("reencode", "mirror", "letterbox", "subtitles", "crop_10", "speed_+10",
                      "pip")
FUSION_ROWS = {f"{picture}+speech_-10db": (picture, "speech_-10db")
               for picture in ("pip", "logo", "crop_10")}
"""Clips with sound whose picture and sound are both degraded (the weakest transformations of
each grid: a dub or commentary 10 dB louder than the soundtrack; at 5 dB, audio alone found
97 % of the dev clips), matched by audio alone, video alone and both, to measure what fusion
adds."""
FUSION_LENGTHS_S = (5.0, 10.0)
FUSION_MODES = ("audio", "video", "audio+video")


def _draw(rng: np.random.Generator, split: str, sources: list[Video], length_s: float,
          count: int) -> list[tuple[Video, float]]:
    """``count`` (source, start) draws: a source uniformly among those with a block of this
    split long enough, then a block, then a start inside it."""
    parity = {"dev": 0, "eval": 1}[split]
    span = length_s * 1.1 + 0.5

    def blocks(video: Video) -> list[int]:
        return [b for b in range(parity, int(video.duration_s // BLOCK_S) + 1, 2)
                if min((b + 1) * BLOCK_S, video.duration_s) - b * BLOCK_S >= span]

    eligible = [v for v in sources if blocks(v)]
    draws = []
    for _ in range(count if eligible else 0):
        video = eligible[rng.integers(len(eligible))]
        block = blocks(video)[rng.integers(len(blocks(video)))]
        end = min((block + 1) * BLOCK_S, video.duration_s) - span
        draws.append((video, round(float(rng.uniform(block * BLOCK_S, end)), 3)))
    return draws


def _clip(split: str, role: str, video: Video, start: float, length: float,
          degradation: str) -> Clip:
    """A clip of a grid row, or of a fusion row (``picture+sound``)."""
    picture, sound = FUSION_ROWS.get(degradation, (degradation, ""))
    spec = VIDEO_DEGRADATIONS[picture]
    digest = spec.digest + (DEGRADATIONS[sound].digest if sound else "")
    name = f"{video.key.replace(':', '__').rsplit('.', 1)[0]}@{start:08.3f}.mp4"
    path = (CACHE / "video_clips" / split / role / f"{degradation}-{digest}"
            / f"{length:g}s" / name)
    return Clip(str(path), role, video.key, str(video.file), degradation, length, start,
                spec.speed)


def _plan(split: str, seed: int, videos: list[Video], lengths: tuple[float, ...],
          rows: tuple[str, ...], negative_rows: tuple[str, ...], per_cell: int,
          negatives_per_length: int) -> list[Clip]:
    """Per length: ``per_cell`` (source, start) draws of the catalogue, each cut for every
    row (a paired comparison), then negatives cycling through ``negative_rows``."""
    rng = np.random.default_rng(seed)
    catalogue = [v for v in videos if v.role == "catalogue"]
    negatives = [v for v in videos if v.role == "non_catalogue"]
    clips = []
    for length in lengths:
        for video, start in _draw(rng, split, catalogue, length, per_cell):
            clips += [_clip(split, "catalogue", video, start, length, row) for row in rows]
        for i, (video, start) in enumerate(_draw(rng, split, negatives, length,
                                                 negatives_per_length)):
            clips.append(_clip(split, "non_catalogue", video, start, length,
                               negative_rows[i % len(negative_rows)]))
    return clips


def plan(split: str, quick: bool, videos: list[Video]) -> list[Clip]:
    """Every muted clip of a run; the same (source, start) draws for every transformation."""
    return _plan(split, SEEDS[split], videos, LENGTHS_S,
                 QUICK_DEGRADATIONS if quick else tuple(VIDEO_DEGRADATIONS),
                 NEGATIVE_DEGRADATIONS, PER_CELL[quick], NEGATIVES_PER_LENGTH[quick])


def plan_curve(split: str, videos: list[Video], rows: tuple[str, ...],
               lengths: tuple[float, ...], per_cell: int) -> list[Clip]:
    """Catalogue clips for a clip-length curve, drawn apart from ``plan``'s (own seed);
    no negatives: the grid's set the operating points."""
    return _plan(split, SEEDS[split] + 1000, videos, lengths, rows, (), per_cell, 0)


def plan_fusion(split: str, quick: bool, videos: list[Video]) -> list[Clip]:
    """Clips with sound for the fusion rows, drawn apart from ``plan``'s (own seed)."""
    rows = tuple(FUSION_ROWS)
    return _plan(split, SEEDS[split] + 100, [v for v in videos if v.has_audio],
                 FUSION_LENGTHS_S, rows, rows, PER_CELL[quick],
                 NEGATIVES_PER_LENGTH[quick] // 2)


def _generate(job: tuple[Clip, str, str]) -> None:
    """Render one clip: the picture transformed (muted), and for a fusion row the sound
    degraded by the audio grid's code and muxed back in as AAC."""
    clip, background, font = job
    seed = int.from_bytes(hashlib.sha256(clip.path.encode()).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    picture, sound = FUSION_ROWS.get(clip.degradation, (clip.degradation, ""))
    out = Path(clip.path)
    muted = out.with_name(out.stem + ".picture.mp4") if sound else out
    degrade_video(Path(clip.source), clip.reference_start_s, clip.length_s, picture, muted,
                  Path(background), Path(font), rng)
    if not sound:
        return
    wav = out.with_name(out.stem + ".sound.wav")
    degrade(Path(clip.source), clip.reference_start_s, clip.length_s, sound, wav, rng)
    partial = out.with_name(out.stem + ".partial.mp4")
    subprocess.run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-i", str(muted),
                    "-i", str(wav), "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy",
                    "-c:a", "aac", "-b:a", "96k", "-shortest", str(partial)], check=True)
    partial.replace(out)
    muted.unlink()
    wav.unlink()


def materialise(clips: list[Clip], font: Path) -> None:
    """Render the clips not cached yet, in parallel; PiP backgrounds alternate per clip."""
    pool_backgrounds = backgrounds()
    missing = [(c, str(pool_backgrounds[i % len(pool_backgrounds)]), str(font))
               for i, c in enumerate(clips) if not Path(c.path).exists()]
    if missing:
        with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
            list(tqdm(pool.map(_generate, missing, chunksize=2), total=len(missing),
                      desc="rendering clips", unit="clip"))


def evaluate_fusion(catalog: Any, clips: list[Clip], refs: dict[str, str]) -> dict[str, Any]:
    """Match each fusion clip three ways (its audio alone, its picture alone, both) and count
    exact answers per row x length x way, and false matches per way on non-catalogue clips."""
    from index.catalog import Query, fingerprint_media

    cells: dict[str, dict[str, dict[str, int]]] = {}
    false = dict.fromkeys(FUSION_MODES, 0)
    negatives = 0
    for clip in tqdm(clips, desc="fusion", unit="clip"):
        query = fingerprint_media(clip.path)
        ways = {"audio": Query(audio=query.audio), "video": Query(video=query.video),
                "audio+video": query}
        verdicts = {mode: grid.judge(clip, catalog.match(ways[mode]), refs)[0]
                    for mode in FUSION_MODES}
        if clip.role != "catalogue":
            negatives += 1
            for mode, verdict in verdicts.items():
                false[mode] += verdict == "false"
            continue
        cell = cells.setdefault(clip.degradation, {}).setdefault(
            f"{clip.length_s:g}s", {"n": 0, **dict.fromkeys(FUSION_MODES, 0)})
        cell["n"] += 1
        for mode, verdict in verdicts.items():
            cell[mode] += verdict in ("exact", "repeat")
    return {"cells": cells, "false": false, "negatives": negatives}


def fusion_lines(fusion: dict[str, Any], split: str) -> list[str]:
    """The fusion table for BENCHMARKS.md."""
    lines = ["", f"### Fusion — split `{split}`: picture and sound both degraded", "",
             f"Clips with sound of the catalogue footage that has a soundtrack; each matched by "
             f"its audio alone, its picture alone, and both (what `MatchClip` does). Cell = % "
             f"title + offset right (±{grid.OFFSET_TOLERANCE_S:g} s).", "",
             "| picture + sound | length | clips | audio alone | video alone | audio+video |",
             "|---|---|---|---|---|---|"]
    for row, by_length in fusion["cells"].items():
        for length, cell in by_length.items():
            pcts = " | ".join(f"{100 * cell[mode] / cell['n']:.0f}" for mode in FUSION_MODES)
            lines.append(f"| {row.replace('+', ' + ')} | {length} | {cell['n']} | {pcts} |")
    false = ", ".join(f"{mode} {fusion['false'][mode]}" for mode in FUSION_MODES)
    lines += ["", f"False matches on {fusion['negatives']} non-catalogue clips with sound "
              f"(same degradations): {false}."]
    return lines


def offset_errors(outcomes: list[grid.Outcome]) -> dict[str, Any]:
    """|reported - true| reference start over the exact answers: the localisation error."""
    errors = [abs(o.top["reference_start_s"] - (o.clip.reference_start_s
                                                + o.top["query_start_s"] * o.clip.speed))
              for o in outcomes if o.verdict == "exact"]
    return {"n": len(errors), "median_s": round(float(np.median(errors)), 3) if errors else None,
            "p95_s": round(float(np.percentile(errors, 95)), 3) if errors else None}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", choices=sorted(SEEDS), default="eval",
                        help="dev: tune on it; eval: the published grid (default)")
    parser.add_argument("--quick", action="store_true",
                        help=f"{PER_CELL[True]} clips per cell, a subset of transformations")
    parser.add_argument("--no-grpc", action="store_true", help="skip the gRPC latency part")
    parser.add_argument("--write-md", action="store_true", help="regenerate BENCHMARKS.md")
    args = parser.parse_args(argv)
    run_start, load_before = time.perf_counter(), os.getloadavg()[0]
    stem = grid.RESULTS / (f"video_{args.split}" + ("_quick" if args.quick else ""))

    from index.catalog import Catalog

    videos = load_videos()
    font = fetch_package("fonts-nanum") / FONT
    clips = plan(args.split, args.quick, videos)
    fusion_clips = plan_fusion(args.split, args.quick, videos)
    materialise(clips + fusion_clips, font)
    catalogue = [v for v in videos if v.role == "catalogue"]
    hd = [v for v in catalogue if v.height >= 720]
    with tempfile.TemporaryDirectory(prefix="clipmatch-video-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        catalog = Catalog(str(data_dir))
        refs_hd, ingest_hd = grid.ingest(catalog, hd)
        refs_rest, ingest_rest = grid.ingest(catalog, [v for v in catalogue if v not in hd])
        catalog.close()
        refs = {**refs_hd, **refs_rest}
        hours = (ingest_hd["audio_h"] + ingest_rest["audio_h"])
        sizes = grid.storage(data_dir, hours)
        video_index_per_h = sum(p.stat().st_size for p in
                                (data_dir / "index" / "video").glob("*.faiss")) / hours
        ten = [c for c in clips if c.role == "catalogue" and c.length_s == 10.0]
        ten = [ten[i] for i in np.random.default_rng(0).permutation(len(ten))]
        latency = ({"skipped": "skipped (--no-grpc)"} if args.no_grpc
                   else grid.grpc_latency(data_dir, ten[:grid.LATENCY_CLIPS[args.quick]]))
        catalog = Catalog(str(data_dir))
        outcomes = grid.evaluate(catalog, clips, refs)
        fusion = evaluate_fusion(catalog, fusion_clips, refs)
        catalog.close()

    summary = grid.summarise(outcomes, negative_label="footage")
    offsets = offset_errors(outcomes)
    negatives = [v for v in videos if v.role == "non_catalogue"]
    results = {
        "grid_name": "Video", "split": args.split, "mode": "quick" if args.quick else "full",
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": grid.commit(), "machine": grid.machine(),
        "command": " ".join(["python -m benchmarks.video_grid", *(argv or sys.argv[1:])]),
        "lengths_s": list(LENGTHS_S),
        "rows": list(VIDEO_DEGRADATIONS),
        "clips_per_cell": PER_CELL[args.quick],
        "catalogue_line": (
            f"Catalogue: {len(refs)} videos, {hours * 60:.1f} min (real footage and Ken-Burns "
            f"episodes of real photos with real music); {PER_CELL[args.quick]} muted clips per "
            f"cell; negatives: {summary['negative_clips']} clips of "
            f"{sum(v.duration_s for v in negatives) / 60:.1f} min of footage not in the "
            f"catalogue, transformed in turn by {', '.join(NEGATIVE_DEGRADATIONS)}. Cell = % "
            f"title + offset right (±{grid.OFFSET_TOLERANCE_S:g} s) / % title right."),
        "ingest": grid.ingest_costs(
            len(refs), hours * 3600, ingest_hd["cpu_s"] + ingest_rest["cpu_s"],
            ingest_hd["wall_s"] + ingest_rest["wall_s"],
            ingest_hd["failed"] + ingest_rest["failed"]),
        "ingest_720p": ingest_hd, "storage": sizes, "latency": latency,
        "video_index_bytes_per_h": round(video_index_per_h),
        "offset_error": offsets, "summary": summary, "fusion": fusion,
        "extra_sections": fusion_lines(fusion, args.split),
        "extra_costs": [
            f"| ingest of 720p H.264 (picture and sound), x realtime per CPU core "
            f"| {ingest_hd['x_realtime_per_core']}x ({ingest_hd['tracks']} videos, "
            f"{ingest_hd['audio_h'] * 60:.1f} min) |",
            f"| video index bytes per hour (`index/video/`) "
            f"| {video_index_per_h / 1e6:.2f} MB/h |",
            f"| offset error of exact answers, median / p95 | {offsets['median_s']} / "
            f"{offsets['p95_s']} s (n={offsets['n']}) |"],
        "method_note": "Clips rendered by ffmpeg (libx264, muted). ",
        "clips_of_failed_references": 0,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "loadavg": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "run_wall_s": round(time.perf_counter() - run_start, 1),
    }
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    raw = grid.RESULTS / "raw" / f"{stem.name}_clips.jsonl"
    raw.parent.mkdir(exist_ok=True)
    raw.write_text("".join(json.dumps({**asdict(o.clip), "verdict": o.verdict, "top": o.top,
                                       "elapsed_ms": round(o.elapsed_s * 1000, 1)}) + "\n"
                           for o in outcomes))
    table = grid.render(results)
    print(table)
    stem.with_suffix(".md").write_text(table)
    if args.write_md:
        grid.write_benchmarks_md()


if __name__ == "__main__":
    main()
