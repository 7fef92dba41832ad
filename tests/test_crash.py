"""A short run of the power-cut harness (``tests.crash``; ``make crash`` runs 50 trials):
SIGKILL during a bulk ingest loses no acknowledged reference and leaves nothing half-written."""

from __future__ import annotations

from pathlib import Path

from tests import crash


def test_killed_ingest_keeps_every_acknowledged_reference(tmp_path: Path) -> None:
    report = crash.run(3, tmp_path)
    assert report["acknowledged"] > 0  # the kills came after some registrations, not before all
    assert report["lost"] == 0
    assert report["unmatchable"] == 0
    assert report["damaged_data_dirs"] == 0
