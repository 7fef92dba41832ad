"""A short run of the concurrency soak (``tests.soak``; ``make soak``: 32 clients, 120 s)."""

from __future__ import annotations

from pathlib import Path

from tests import soak


def test_concurrent_clients_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    report = soak.run(8, 8.0, tmp_path)
    assert report["errors"] == []
    assert report["lost"] == report["unexpected"] == report["duplicated"] == 0
    assert report["crashed_calls"] == 0
    assert all(report["calls"].get(kind, {"n": 0})["n"] > 0
               for kind in ("match", "register", "delete", "list"))
