"""Audio benchmark: accuracy per (degradation x clip length), false matches, cost and latency.

A fresh ``Catalog`` in a temporary data dir ingests the catalogue tracks of
``benchmarks/manifest.json``; the real gRPC server is started on that data dir to time 10 s
clips end to end; then the catalogue is reopened in-process and every clip of the split is
matched. Results go to
``benchmarks/results/audio_<split>[_quick].{json,md}``, and with ``--write-md`` to BENCHMARKS.md.

Scoring (one rule for every row): the top match (highest score) is *title right* when it is
the clip's reference, and *offset right* as well when the reference time it pairs with its
query_start_s is within OFFSET_TOLERANCE_S of the truth. With speed s = query rate ÷ reference
rate, query time t shows reference time ``true_start + t * s``, so the check is
``|reference_start_s - (true_start + query_start_s * s)| <= 1 s``. Any match on a
non-catalogue clip (music or speech) is a false match.

Game music loops its own material, so "which offset" can be ambiguous: a title-right answer
whose offset is wrong is counted as a *repeat* (offset-ambiguous, as media.md asks) when the
reference audio at the reported offset is a repeat of the audio at the true offset — the
log band energies of the two reference passages (decoded by ffmpeg, independent of
clipmatch's fingerprint) correlate at REPEAT_CORRELATION or more. Repeats are shown in
their own column and counted with the exact answers in "title + offset".
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.signal import stft
from tqdm import tqdm

from benchmarks import clips as clipsets
from benchmarks.corpus import MANIFEST, REPO, Track, load_tracks, quick_catalogue
from benchmarks.degrade import DEGRADATIONS, has_rubberband

RESULTS = REPO / "benchmarks" / "results"
BENCHMARKS_MD = REPO / "BENCHMARKS.md"
OFFSET_TOLERANCE_S = 1.0
REPEAT_CORRELATION = 0.9
INDEX_PATTERNS = ("*.faiss", "*.index", "*.landmarks")
"""Files holding the index (FAISS segments and their landmark tables); the rest of the data
dir is metadata and raw fingerprints."""
LATENCY_CLIPS = {False: 100, True: 30}
WARMUP_CLIPS = 5
SERVER_START_TIMEOUT_S = 300.0
"""Generous: a server may rebuild its index from the fingerprints when it opens the data dir."""
QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)
THRESHOLDS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class Outcome:
    """How one clip was answered: exact / repeat / title / wrong / none (catalogue), false / none
    (negatives), or error (the library raised)."""

    clip: clipsets.Clip
    verdict: str
    top: dict[str, Any] | None
    elapsed_s: float

    @property
    def score(self) -> float | None:
        return None if self.top is None else float(self.top["score"])


def cpu_seconds() -> float:
    """CPU of this process (all threads) plus finished children, e.g. decoder subprocesses."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def ingest(catalog: Any, catalogue: list[Track]) -> tuple[dict[str, str], dict[str, Any]]:
    """Register every catalogue track by path; returns reference_id → track key and costs."""
    refs: dict[str, str] = {}
    failed: list[dict[str, str]] = []
    wall0, cpu0 = time.perf_counter(), cpu_seconds()
    for track in tqdm(catalogue, desc="ingest", unit="track"):
        try:
            ref = catalog.register(str(track.file), title=track.key, external_id=track.sha256[:16],
                                   metadata={"package": track.package, "path": track.path})
        except ValueError as exc:  # MediaError and DuplicateError are ValueErrors
            failed.append({"track": track.key, "error": f"{type(exc).__name__}: {exc}"})
            continue
        refs[ref.reference_id] = track.key
    wall, cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
    audio_s = sum(t.duration_s for t in catalogue if t.key in refs.values())
    return refs, ingest_costs(len(refs), audio_s, cpu, wall, failed)


def ingest_costs(tracks: int, audio_s: float, cpu_s: float, wall_s: float,
                 failed: list[dict[str, str]]) -> dict[str, Any]:
    """The ingest figures the report shows, from totals (so batches can be added up)."""
    return {"tracks": tracks, "audio_h": round(audio_s / 3600, 3),
            "wall_s": round(wall_s, 1), "cpu_s": round(cpu_s, 1),
            "x_realtime_per_core": round(audio_s / cpu_s, 1),
            "x_realtime_wall": round(audio_s / wall_s, 1), "failed": failed}


def storage(data_dir: Path, audio_h: float) -> dict[str, Any]:
    """Index bytes (FAISS files) and whole data dir bytes, per hour of reference audio."""
    files = [p for p in data_dir.rglob("*") if p.is_file()]
    index = [p for p in files if any(p.match(pattern) for pattern in INDEX_PATTERNS)]
    index_bytes, total_bytes = sum(p.stat().st_size for p in index), sum(
        p.stat().st_size for p in files)
    by_entry: dict[str, int] = {}
    for p in files:
        entry = p.relative_to(data_dir).parts[0]
        by_entry[entry] = by_entry.get(entry, 0) + p.stat().st_size
    return {"index_files": sorted(str(p.relative_to(data_dir)) for p in index),
            "index_bytes": index_bytes, "data_dir_bytes": total_bytes,
            "index_bytes_per_h": round(index_bytes / audio_h),
            "data_dir_bytes_per_h": round(total_bytes / audio_h),
            "data_dir_bytes_by_entry": by_entry}


def index_dirs(files: list[str]) -> list[str]:
    """Where the index files are: the folders of a segmented index, or the files of an
    older single-file one (results kept from before segments)."""
    folders = sorted({str(Path(f).parent) + "/" for f in files if Path(f).parent.name in
                      ("audio", "video")})
    return folders or files or ["no *.faiss/*.index"]


def judge(clip: clipsets.Clip, matches: list[Any], refs: dict[str, str],
          repeat: Callable[[clipsets.Clip, float], bool] | None = None) -> tuple[str, Any]:
    """Verdict on the top match (see the module docstring) and the top match itself.
    ``repeat`` tells whether a wrong offset shows the same material as the true one."""
    if not matches:
        return "none", None
    top = max(matches, key=lambda m: m.score)
    if clip.role != "catalogue":
        return "false", top
    if refs.get(top.reference_id) != clip.track:
        return "wrong", top
    expected = clip.reference_start_s + top.query_start_s * clip.speed
    if abs(top.reference_start_s - expected) <= OFFSET_TOLERANCE_S:
        return "exact", top
    claimed = top.reference_start_s - top.query_start_s * clip.speed
    return ("repeat" if repeat is not None and repeat(clip, claimed) else "title"), top


def band_envelope(path: str, start_s: float, length_s: float) -> np.ndarray:
    """Log energies in 16 log-spaced bands (125 Hz-3.4 kHz), 32 ms hops: a coarse sound print."""
    pcm = subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-ss", f"{max(start_s, 0.0):.3f}", "-t",
         f"{length_s:.3f}", "-i", path, "-ac", "1", "-ar", "8000", "-f", "f32le", "-"],
        capture_output=True, check=True).stdout
    _, _, spectrum = stft(np.frombuffer(pcm, dtype=np.float32), 8000, nperseg=512,
                          noverlap=256)
    power = np.abs(spectrum) ** 2
    edges = np.geomspace(8, 220, 17).astype(int)
    return np.log(np.stack([power[a:b].sum(axis=0) for a, b in itertools.pairwise(edges)])
                  + 1e-9)


def is_repeat(clip: clipsets.Clip, claimed_start_s: float) -> bool:
    """Whether the reference sounds the same at the claimed offset as at the true one.

    Looping game music repeats whole passages; media.md asks for such hits to count as
    offset-ambiguous, not wrong. Repeats measured 0.94-0.99 here, different passages of one
    track at most 0.77.
    """
    length = clip.length_s * clip.speed
    a = band_envelope(clip.source, clip.reference_start_s, length)
    b = band_envelope(clip.source, claimed_start_s, length)
    frames = min(a.shape[1], b.shape[1])
    if frames < 2:
        return False
    x, y = a[:, :frames].ravel(), b[:, :frames].ravel()
    x, y = x - x.mean(), y - y.mean()
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-12)) >= REPEAT_CORRELATION


def evaluate(catalog: Any, clips: list[clipsets.Clip], refs: dict[str, str],
             repeat: Callable[[clipsets.Clip, float], bool] | None = None) -> list[Outcome]:
    """Match every clip in-process, one at a time (timings stay per clip)."""
    outcomes: list[Outcome] = []
    for clip in tqdm(clips, desc="match", unit="clip"):
        start = time.perf_counter()
        try:
            matches = catalog.match_media(clip.path)
        except ValueError:
            outcomes.append(Outcome(clip, "error", None, time.perf_counter() - start))
            continue
        elapsed = time.perf_counter() - start
        verdict, top = judge(clip, matches, refs, repeat)
        outcomes.append(Outcome(clip, verdict, None if top is None else asdict(top), elapsed))
    return outcomes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerDidNotStart(RuntimeError):
    """``python -m server`` exited or never answered its health check (message: last log line)."""


@contextlib.contextmanager
def serving(data_dir: Path, *extra_args: str) -> Iterator[tuple[str, str]]:
    """Run ``python -m server`` on the data dir until the block ends; yields its target and
    the admin token its first start left in the data dir, once its health check says
    SERVING."""
    from client.sdk import ClipmatchClient, ClipmatchError
    from server.access import ADMIN_TOKEN_FILE

    target = f"127.0.0.1:{free_port()}"
    log_path = data_dir.parent / "server.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "server", "--data-dir", str(data_dir), "--listen", target,
             *extra_args], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        with ClipmatchClient(target) as client:
            deadline = time.monotonic() + SERVER_START_TIMEOUT_S
            while True:
                with contextlib.suppress(ClipmatchError):  # not listening yet
                    if client.health() == "SERVING":
                        break
                if server.poll() is not None or time.monotonic() > deadline:
                    lines = log_path.read_text(errors="replace").strip().splitlines() or ["-"]
                    raise ServerDidNotStart(lines[-1][:300])
                time.sleep(0.2)
        yield target, (data_dir / ADMIN_TOKEN_FILE).read_text().strip()
    finally:
        server.terminate()
        server.wait(timeout=60)


def grpc_latency(data_dir: Path, clips: list[clipsets.Clip]) -> dict[str, Any]:
    """Start ``python -m server`` on the data dir, warm it, time each clip's MatchClip call.

    A server that fails to come up is reported (with its last log line), not fatal: the
    accuracy results of a long run are worth keeping.
    """
    from client.sdk import ClipmatchClient

    try:
        with serving(data_dir) as (target, token), ClipmatchClient(target,
                                                                   token=token) as client:
            for clip in clips[:WARMUP_CLIPS]:
                client.match(clip.path)
            wall_ms, server_ms = [], []
            for clip in tqdm(clips, desc="gRPC latency", unit="clip"):
                start = time.perf_counter()
                response = client.match(clip.path)
                wall_ms.append((time.perf_counter() - start) * 1000)
                server_ms.append(response["elapsed_ms"])
    except ServerDidNotStart as exc:
        return {"skipped": f"the server did not start: {exc}"}
    return {"n": len(clips), **percentiles("client", wall_ms), **percentiles("server", server_ms)}


def percentiles(prefix: str, values: list[float]) -> dict[str, float]:
    return {f"{prefix}_p50_ms": round(float(np.percentile(values, 50)), 1),
            f"{prefix}_p95_ms": round(float(np.percentile(values, 95)), 1)}


def quantiles(scores: list[float]) -> dict[str, Any]:
    if not scores:
        return {"n": 0}
    return {"n": len(scores), **{f"q{round(q * 100)}": round(float(np.quantile(scores, q)), 3)
                                 for q in QUANTILES}}


def summarise(outcomes: list[Outcome], negative_label: str = "music") -> dict[str, Any]:
    """Grid counts, negatives (``negative_label`` names non-speech ones), score
    distributions and a threshold sweep."""
    grid: dict[str, dict[str, dict[str, int]]] = {}
    negatives: dict[str, dict[str, int]] = {}
    for o in outcomes:
        if o.clip.role == "catalogue":
            cell = grid.setdefault(o.clip.degradation, {}).setdefault(
                f"{o.clip.length_s:g}s", {"n": 0, "exact": 0, "repeat": 0, "title": 0,
                                          "wrong": 0, "none": 0, "error": 0})
        else:
            kind = ("speech" if o.clip.role == "speech"
                    else f"{negative_label} {o.clip.degradation}")
            cell = negatives.setdefault(kind, {"n": 0, "false": 0, "none": 0, "error": 0})
        cell["n"] += 1
        cell[o.verdict] += 1
    catalogue = [o for o in outcomes if o.clip.role == "catalogue"]
    false = [o for o in outcomes if o.verdict == "false"]
    sweep = []
    for t in THRESHOLDS:
        def above(*verdicts: str, threshold: float = t) -> int:
            return sum(o.verdict in verdicts and (o.score or 0.0) >= threshold for o in outcomes)
        sweep.append({"threshold": t,
                      "title_offset_pct": round(100 * above("exact", "repeat") / len(catalogue),
                                                1),
                      "wrong_catalogue_answers": above("wrong"),
                      "false_matches": above("false")})
    ten = [o.elapsed_s * 1000 for o in catalogue if o.clip.length_s == 10.0]
    return {
        "grid": grid,
        "negatives": dict(sorted(negatives.items())),
        "false_matches": len(false),
        "negative_clips": sum(o.clip.role != "catalogue" for o in outcomes),
        "errors": sum(o.verdict == "error" for o in outcomes),
        "scores": {"true_top_matches": quantiles([o.score for o in outcomes
                                                  if o.verdict in ("exact", "repeat")
                                                  and o.score is not None]),
                   "title_right_offset_wrong": quantiles([o.score for o in outcomes
                                                          if o.verdict == "title"
                                                          and o.score is not None]),
                   "wrong_reference": quantiles([o.score for o in outcomes
                                                 if o.verdict == "wrong" and o.score is not None]),
                   "false_on_negatives": quantiles([o.score for o in false
                                                    if o.score is not None])},
        "threshold_sweep": sweep,
        "in_process_10s": percentiles("match", ten) if ten else {},
    }


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                  if line.startswith("model name")), platform.processor())
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    ffmpeg = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout
    return {"nproc": os.cpu_count(), "cpu": model, "ram_gb": round(mem_kb / 2**20, 1),
            "python": platform.python_version(), "ffmpeg": " ".join(ffmpeg.split()[:3:2])}


def commit() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                          text=True).stdout.strip()
    changes = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True,
                             text=True).stdout.strip()
    return head + ("+uncommitted changes" if changes else "")


def pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}" if whole else "–"


def render(results: dict[str, Any]) -> str:
    """The run as markdown: grid, negatives, cost, score distribution, threshold sweep."""
    lengths = [f"{length:g}s" for length in results.get("lengths_s", clipsets.LENGTHS_S)]
    s = results["summary"]
    catalogue_line = results.get("catalogue_line") or (
        f"Catalogue: {results['ingest']['tracks']} tracks, {results['ingest']['audio_h']} h; "
        f"{results['clips_per_cell']} clips per cell; negatives: {s['negative_clips']} clips "
        f"(non-catalogue music {results['corpus']['non_catalogue_h']} h, and speech). "
        f"Cell = % title + offset right (±{OFFSET_TOLERANCE_S:g} s, or at a repeat of the "
        f"true passage) / % title right. Repeats: answers at a repeated passage of the "
        f"reference (offset-ambiguous), included in the first figure.")
    lines = [
        f"### {results.get('grid_name', 'Audio')} grid — split `{results['split']}`, "
        f"{results['mode']} mode",
        "",
        catalogue_line,
        "",
        "| degradation | " + " | ".join(f"{length[:-1]} s clips" for length in lengths)
        + " | repeats | wrong answers | no answer |",
        "|---|" + "---|" * (len(lengths) + 3),
    ]
    totals = {length: {"n": 0, "exact": 0, "repeat": 0, "title": 0} for length in lengths}
    for name in (d for d in results.get("rows", DEGRADATIONS) if d in s["grid"]):
        row = s["grid"][name]
        cells = []
        for length in lengths:
            c = row[length]
            right = c["exact"] + c.get("repeat", 0)
            cells.append(f"{pct(right, c['n'])} / {pct(right + c['title'], c['n'])}")
            for key in totals[length]:
                totals[length][key] += c.get(key, 0)
        repeats = sum(c.get("repeat", 0) for c in row.values())
        wrong = sum(c["wrong"] for c in row.values())
        none = sum(c["none"] + c["error"] for c in row.values())
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {repeats} | {wrong} | {none} |")
    lines.append("| **all** | " + " | ".join(
        f"**{pct(t['exact'] + t['repeat'], t['n'])} / "
        f"{pct(t['exact'] + t['repeat'] + t['title'], t['n'])}**"
        for t in totals.values()) + " | | | |")
    neg = ", ".join(f"{kind} {c['false']}/{c['n']}" for kind, c in s["negatives"].items())
    lines += ["", f"**False matches: {s['false_matches']} of {s['negative_clips']} non-catalogue "
                  f"clips ({pct(s['false_matches'], s['negative_clips'])} %)** — {neg}.", ""]
    ing, idx, lat = results["ingest"], results["storage"], results["latency"]
    grpc = (f"{lat['client_p50_ms']} / {lat['client_p95_ms']} ms "
            f"(server {lat['server_p50_ms']} / {lat['server_p95_ms']} ms, n={lat['n']})"
            if "client_p50_ms" in lat else lat.get("skipped", "–"))
    inproc = s["in_process_10s"]
    lines += [
        "| cost | value |", "|---|---|",
        f"| ingest, x realtime per CPU core | {ing['x_realtime_per_core']}x "
        f"({ing['audio_h']} h in {ing['cpu_s']} CPU s) |",
        f"| ingest wall | {ing['wall_s']} s ({ing['x_realtime_wall']}x realtime) |",
        f"| index bytes per hour (`{'`, `'.join(index_dirs(idx['index_files']))}`) "
        f"| {idx['index_bytes_per_h'] / 1e6:.2f} MB/h |",
        f"| whole data dir per hour | {idx['data_dir_bytes_per_h'] / 1e6:.2f} MB/h |",
        f"| peak RSS of the benchmark process (catalogue open, all clips matched) "
        f"| {results['peak_rss_mb']} MB |",
        f"| 10 s clip, in-process match_media p50 / p95 | {inproc.get('match_p50_ms', '–')} / "
        f"{inproc.get('match_p95_ms', '–')} ms |",
        f"| 10 s clip over gRPC, client p50 / p95 | {grpc} |",
        *results.get("extra_costs", []),
        "",
        "Top-match score distribution (quantiles):", "",
        "| top match | n | min | 5 % | 25 % | 50 % | 75 % | 95 % | max |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, q in s["scores"].items():
        values = " | ".join(str(q.get(f"q{round(x * 100)}", "–")) for x in QUANTILES)
        lines.append(f"| {kind.replace('_', ' ')} | {q['n']} | {values} |")
    lines += ["", "If the service only answered at score ≥ threshold:", "",
              "| threshold | % title + offset right | wrong catalogue answers | false matches |",
              "|---|---|---|---|"]
    lines += [f"| {r['threshold']:.1f} | {r['title_offset_pct']} | {r['wrong_catalogue_answers']} "
              f"| {r['false_matches']} |" for r in s["threshold_sweep"]]
    failed = ing["failed"]
    lines += ["", f"Ingest failures: {len(failed)}" + (
        "; " + "; ".join(f"{f['track']}: {f['error']}" for f in failed) if failed else "") + ". "
        f"Clips of those references, left out of the grid: "
        f"{results['clips_of_failed_references']}. "
        f"Match errors: {s['errors']}. {results.get('method_note', '')}"
        f"{'' if 'method_note' in results else 'Pitch shift: ' + results['pitch_method'] + '. '}"
        f"Load average before / after: {results['loadavg'][0]} / {results['loadavg'][1]}. "
        f"Run time: {results['run_wall_s'] / 60:.1f} min.", ""]
    sections = results.get("extra_sections", [])  # e.g. the video grid's fusion table
    return "\n".join(lines + sections + ([""] if sections else []))


def corpus_notes() -> list[str]:
    """What the corpus holds and what was set aside, straight from the committed manifest."""
    manifest = json.loads(MANIFEST.read_text())
    totals, tracks = manifest["totals"], manifest["tracks"]
    role = {f"{t['package']}/{t['path']}": t["role"] for t in tracks}
    negatives = ", ".join(f"{t['package']}: {Path(t['path']).name} ({t['duration_s']:.0f} s)"
                          for t in tracks if t["role"] == "non_catalogue")
    groups = "; ".join(f"{g} → {role[m[0]]} ({', '.join(Path(x).name for x in m)})"
                       for g, m in manifest["variant_groups"].items())
    return [
        "### Corpus (`benchmarks/manifest.json`)",
        "",
        "- packages: " + ", ".join(f"{p} {v}" for p, v in manifest["packages"].items()),
        f"- catalogue: {totals['catalogue_tracks']} tracks, {totals['catalogue_h']} h; "
        f"non-catalogue: {totals['non_catalogue_tracks']} tracks, {totals['non_catalogue_h']} h "
        f"({negatives}); speech: {manifest['speech']['files']} Czech voice clips, "
        f"{manifest['speech']['duration_s'] / 3600:.2f} h",
        f"- dropped as shorter than {manifest['min_track_s']:g} s: "
        + ", ".join(Path(d["track"]).name for d in manifest["dropped_short"]),
        f"- exact copies (same file or same decoded audio): {len(manifest['duplicates'])}",
        "- variant groups (same name stem, kept on one side of the split): " + groups,
        "",
    ]


def run_notes(results: dict[str, Any]) -> list[str]:
    m = results["machine"]
    return [f"- date: {results['date']}; commit: `{results['commit']}`",
            f"- machine: {m['nproc']} cores ({m['cpu']}), {m['ram_gb']} GB RAM; "
            f"Python {m['python']}; {m['ffmpeg']}",
            f"- command: `{results['command']}`", ""]


def write_benchmarks_md() -> None:
    """BENCHMARKS.md from the published (eval, full) results of both grids, generated so no
    figure is ever typed by hand."""
    audio, video = (RESULTS / "audio_eval.json", RESULTS / "video_eval.json")
    lines = [
        "# Benchmarks",
        "",
        "Generated by `python -m benchmarks.audio_grid --write-md` (or `video_grid`, "
        "`anchor_grid`) from `benchmarks/results/*_eval.json`; do not edit by hand.",
        "",
        "## Reproduce",
        "",
        "- `make bench AUDFPRINT=<checkout> OLAF=<checkout>` — every table and plot below: the",
        "  full audio and video grids, the anchors on the `eval` split (published numbers;",
        "  never tuned on), ingest scaling and catalogue size (several hours in all, most of",
        "  it `make bench-scale`). The two checkouts: `git clone https://github.com/dpwe/audfprint`",
        "  (tested at cb03ba9) and `git clone https://github.com/JorenSix/Olaf` (e5d89fb);",
        "  default paths `../audfprint`, `../Olaf`; without them, their columns say how to",
        "  get them.",
        "- `make bench-quick` — a few minutes each: smaller catalogue or fewer clips and rows.",
        "- `make bench-scale` — the audio catalogue padded with distractors to 100, 1,000 and",
        "  2,000 h (`benchmarks/scale.py`; about 1.5 h and 10 GB of disk), the video catalogue",
        "  as far as its distractors reach (`--modality video`, minutes), then concurrent",
        "  gRPC clients against the real server (`benchmarks/load.py`, minutes).",
        "- `make bench-anchors` — only the comparisons: clipmatch beside Chromaprint, audfprint",
        "  and Olaf on the audio grid's eval clips, and beside PDQ and vPDQ on the video grid's",
        "  (`bench-anchors-quick`: the quick clips, minutes). `benchmarks/setup.sh anchors`",
        "  installs Debian's FFmpeg development packages, which PyPI's `vpdq` compiles against.",
        "- `.venv/bin/python -m benchmarks.audio_grid --split dev [--quick]` (and the same for",
        "  `benchmarks.video_grid`) — the split to tune on; clips land in `.cache/benchmarks/`.",
        "- `.venv/bin/python -m benchmarks.corpus` / `benchmarks.video_corpus` rebuild",
        "  `benchmarks/manifest.json` / `benchmarks/video_manifest.json` (media from Debian",
        "  packages and PyPI, fetched into `.cache/benchmarks/`).",
        "",
    ]
    if audio.exists():
        results = json.loads(audio.read_text())
        lines += ["## Audio", "", *corpus_notes(), "### This run", "", *run_notes(results),
                  render(results)]
    if video.exists():
        results = json.loads(video.read_text())
        lines += ["## Video", "", "### This run", "", *run_notes(results), render(results)]
    from benchmarks import anchor_grid

    for kind, name in (("Audio", "anchors_eval.json"), ("Video", "anchors_video_eval.json")):
        if (RESULTS / name).exists():
            results = json.loads((RESULTS / name).read_text())
            lines += [f"## {kind} against the anchors", "", "### This run", "",
                      *run_notes(results), anchor_grid.render(results, relative_to_results=False)]
    from benchmarks import scale as scale_benchmark

    about = [part.replace("\n", " ") for part in scale_benchmark.__doc__.split("\n\n")]
    for heading, name in (("Catalogue size", "scale.json"),
                          ("Catalogue size: video", "scale_video.json")):
        if (RESULTS / name).exists():
            results = json.loads((RESULTS / name).read_text())
            lines += [f"## {heading}", "", *(["\n\n".join(about), ""] if about else []),
                      "### This run", "", *run_notes(results), scale_benchmark.render(results)]
            about = []  # said once
    scaling = RESULTS / "ingest_scaling.json"
    if scaling.exists():
        from benchmarks import ingest_scaling

        results = json.loads(scaling.read_text())
        lines += ["## Ingest on one core and on all", "", ingest_scaling.__doc__.split("\n\n")[0]
                  .replace("\n", " "), "", "### This run", "", *run_notes(results),
                  ingest_scaling.render(results)]
    load = RESULTS / "load.json"
    if load.exists():
        from benchmarks import load as load_benchmark

        results = json.loads(load.read_text())
        about = [part.replace("\n", " ") for part in load_benchmark.__doc__.split("\n\n")]
        lines += ["## Concurrent clients", "", "\n\n".join(about), "", "### This run", "",
                  *run_notes(results), load_benchmark.render(results)]
    BENCHMARKS_MD.write_text("\n".join(lines))


def planned(split: str, quick: bool) -> tuple[list[Track], list[Track], list[clipsets.Clip]]:
    """The corpus tracks, the catalogue and the clips of a run (rendered, cached): one
    definition for every benchmark that scores the audio grid's clips."""
    tracks = load_tracks()
    catalogue = quick_catalogue(tracks) if quick else [t for t in tracks
                                                       if t.role == "catalogue"]
    clips = clipsets.plan(split, quick, tracks, catalogue)
    clipsets.materialise(clips)
    return tracks, catalogue, clips


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", choices=sorted(clipsets.SEEDS), default="eval",
                        help="dev: tune on it; eval: the published grid (default)")
    parser.add_argument("--quick", action="store_true",
                        help="40-track catalogue, 8 clips per cell, a subset of degradations")
    parser.add_argument("--no-grpc", action="store_true",
                        help="skip the gRPC latency part (the server is not started)")
    parser.add_argument("--write-md", action="store_true", help="regenerate BENCHMARKS.md")
    parser.add_argument("--rerender", action="store_true",
                        help="only re-render the markdown from the saved results JSON")
    args = parser.parse_args(argv)
    run_start, load_before = time.perf_counter(), os.getloadavg()[0]
    mode = "quick" if args.quick else "full"
    stem = RESULTS / (f"audio_{args.split}" + ("_quick" if args.quick else ""))
    if args.rerender:
        publish(json.loads(stem.with_suffix(".json").read_text()), stem, args.write_md)
        return

    from index.catalog import Catalog

    tracks, catalogue, clips = planned(args.split, args.quick)

    with tempfile.TemporaryDirectory(prefix="clipmatch-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        catalog = Catalog(str(data_dir))
        refs, ingest_cost = ingest(catalog, catalogue)
        catalog.close()  # writes the index file, which a catalogue may save only now and then
        sizes = storage(data_dir, ingest_cost["audio_h"])
        registered = set(refs.values())
        scored = [c for c in clips if c.role != "catalogue" or c.track in registered]
        ten = [c for c in scored if c.role == "catalogue" and c.length_s == 10.0]
        ten = [ten[i] for i in np.random.default_rng(0).permutation(len(ten))]
        latency = ({"skipped": "skipped (--no-grpc)"} if args.no_grpc
                   else grpc_latency(data_dir, ten[:LATENCY_CLIPS[args.quick]]))
        catalog = Catalog(str(data_dir))  # reopened, as a restarted service would
        outcomes = evaluate(catalog, scored, refs, is_repeat)
        catalog.close()

    negatives = [t for t in tracks if t.role == "non_catalogue"]
    results = {
        "split": args.split, "mode": mode,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit(), "machine": machine(),
        "command": " ".join(["python -m benchmarks.audio_grid", *(argv or sys.argv[1:])]),
        "corpus": {"catalogue_tracks": len(catalogue),
                   "non_catalogue_tracks": len(negatives),
                   "non_catalogue_h": round(sum(t.duration_s for t in negatives) / 3600, 2)},
        "clips_per_cell": (clipsets.QUICK if args.quick else clipsets.FULL).per_cell,
        "pitch_method": "ffmpeg rubberband filter" if has_rubberband() else "asetrate + atempo",
        "ingest": ingest_cost, "storage": sizes, "latency": latency,
        "summary": summarise(outcomes),
        "clips_of_failed_references": len(clips) - len(scored),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "loadavg": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "run_wall_s": round(time.perf_counter() - run_start, 1),
    }
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    raw = RESULTS / "raw" / f"{stem.name}_clips.jsonl"  # git-ignored: per-clip answers to debug
    raw.parent.mkdir(exist_ok=True)
    raw.write_text("".join(json.dumps({**asdict(o.clip), "verdict": o.verdict, "top": o.top,
                                       "elapsed_ms": round(o.elapsed_s * 1000, 1)}) + "\n"
                           for o in outcomes))
    publish(results, stem, args.write_md)


def run_stamp(module: str, argv: list[str] | None, quick: bool) -> dict[str, Any]:
    """What every result file starts with: when, at which commit, on what machine, how."""
    return {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": commit(), "machine": machine(),
            "command": " ".join([f"python -m {module}", *(argv or sys.argv[1:])]),
            "mode": "quick" if quick else "full"}


def save_results(name: str, results: dict[str, Any], render_table: Callable[[dict], str],
                 write_md: bool) -> None:
    """Write ``results/<name>[_quick].json``, print its table, regenerate BENCHMARKS.md if
    asked."""
    stem = RESULTS / (name + ("_quick" if results["mode"] == "quick" else ""))
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    print(render_table(results))
    if write_md:
        write_benchmarks_md()


def publish(results: dict[str, Any], stem: Path, write_md: bool) -> None:
    """Print the tables and write ``<stem>.md`` (and BENCHMARKS.md with ``write_md``)."""
    table = render(results)
    print(table)
    stem.with_suffix(".md").write_text(table)
    if write_md:
        write_benchmarks_md()


if __name__ == "__main__":
    main()
