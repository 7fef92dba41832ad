"""The open anchors, run on the audio grid's own clips and scored by its own rule.

Each anchor is a small class with one job per method: ``ingest`` the catalogue tracks,
``match`` a batch of clip files, and say how many bytes its index takes. Answers come back as
``Answer`` records that ``benchmarks.audio_grid.judge`` scores exactly as it scores clipmatch's
matches, so every column of the comparison is counted by the same code.

Nothing of the anchors is committed: registries provide what they can (Debian's fpcalc, PyPI's
``ziglang`` and audfprint's dependencies), and the rest is a source checkout whose path the
user passes; ``AnchorUnavailable`` says how to get it when it is missing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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
