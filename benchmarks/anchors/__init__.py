"""The open anchors, run on the audio grid's own clips and scored by its own rule.

Each anchor is a small class with one job per method: ``ingest`` the catalogue tracks,
``match`` a batch of clip files, and say how many bytes its index takes. Answers come back as
``Answer`` records that ``benchmarks.audio_grid.judge`` scores exactly as it scores clipmatch's
matches, so every column of the comparison is counted by the same code. Clips are matched one
at a time, so each clip's latency is timed; an anchor whose library is Python runs in a
long-lived ``Worker``, loaded once, so that time is the query's, not an interpreter's start.

Nothing of the anchors is committed: registries provide what they can (Debian's fpcalc, PyPI's
``ziglang`` and audfprint's dependencies), and the rest is a source checkout whose path the
user passes; ``AnchorUnavailable`` says how to get it when it is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from benchmarks.corpus import CACHE

ANCHOR_CACHE = CACHE / "anchors"


@dataclass(frozen=True)
class Answer:
    """One candidate of an anchor for a clip, in the fields ``audio_grid.judge`` reads;
    ``reference_id`` is the catalogue track's key."""

    reference_id: str
    score: float
    query_start_s: float
    reference_start_s: float
    """NaN for an anchor that names a reference but no place in it (vPDQ)."""


class AnchorUnavailable(RuntimeError):
    """An anchor cannot run on this machine; the message says what to do."""


def run_tool(command: Sequence[str | os.PathLike[str]], **kwargs: object
             ) -> subprocess.CompletedProcess[str]:
    """Run an anchor's command line, failing with its stderr: a silent failure would read as
    an anchor that matched nothing."""
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True,
                          **kwargs)  # type: ignore[call-overload]
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(str(c) for c in command[:4])}... exited with "
                           f"{done.returncode}: {done.stderr.strip()[-2000:]}")
    return done


def environment(requirements: Sequence[str]) -> Path:
    """The anchors' own virtual environment (not clipmatch's) with ``requirements`` from PyPI
    installed; returns its python. Each requirement is installed once."""
    venv = ANCHOR_CACHE / "venv"
    python = venv / "bin" / "python"
    if not python.exists():
        run_tool([sys.executable, "-m", "venv", venv])
    missing = [r for r in requirements if not (venv / f".installed-{r}").exists()]
    if missing:
        run_tool([python, "-m", "pip", "install", "--quiet", *missing])
        for requirement in missing:
            (venv / f".installed-{requirement}").touch()
    return python


def checkout(path: Path | None, marker: str, how_to_get: str) -> Path:
    """The anchor's source checkout, resolved, if it holds ``marker``; else say how to get it."""
    if path is None or not (path / marker).exists():
        raise AnchorUnavailable(how_to_get)
    return path.resolve()


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class Worker:
    """A helper process in the anchors' environment running ``script`` (with ``args``): it
    reads one request per line on stdin and writes one JSON line per request."""

    live: ClassVar[list[Worker]] = []

    def __init__(self, python: Path, script: str, *args: str) -> None:
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close_all)
        self._process = subprocess.Popen([str(python), "-c", script, *args],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=self._stderr, text=True)
        Worker.live.append(self)

    def ask(self, request: str) -> Any:
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(request + "\n")
        self._process.stdin.flush()
        line = self._process.stdout.readline()
        if not line:
            self._stderr.seek(0)
            raise RuntimeError(f"anchor worker died on {request!r}: "
                               f"{self._stderr.read().decode(errors='replace')[-2000:]}")
        return json.loads(line)

    def cpu_seconds(self) -> float:
        """CPU the worker and its finished children (decoders) have used so far: a live
        process is not in this process's ``RUSAGE_CHILDREN`` until it ends."""
        fields = Path(f"/proc/{self._process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")

    @classmethod
    def cpu_seconds_of_live(cls) -> float:
        return sum(w.cpu_seconds() for w in cls.live)

    @classmethod
    def close_all(cls) -> None:
        """End every worker, so their CPU and peak memory join ``RUSAGE_CHILDREN``."""
        for worker in cls.live:
            assert worker._process.stdin is not None
            worker._process.stdin.close()
            worker._process.wait()
            worker._stderr.close()
        cls.live.clear()


def hamming(queries: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Bit distances between every row of two packed-bit uint8 arrays: [queries, references]."""
    return np.bitwise_count(queries[:, None, :] ^ references[None, :, :]).sum(axis=2,
                                                                               dtype=np.int32)
