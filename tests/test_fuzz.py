"""A short run of the hostile-input harness (``tests.fuzz``; ``make fuzz`` runs 10,000 cases):
every case answered with a status a client can act on, the server up and small after."""

from __future__ import annotations

from pathlib import Path

from tests import fuzz


def test_hostile_input_is_answered_and_the_server_stays_up(tmp_path: Path) -> None:
    report = fuzz.run(280, tmp_path)
    assert report["cases"] >= 280
    assert report["failures"] == []
    assert report["server_alive"] and report["crashed_calls"] == 0
    assert report["server_rss_mb"] <= fuzz.MAX_SERVER_RSS_MB
    assert set(report["codes"]) == {"decode_media", "MatchClip", "CreateReference",
                                    "MatchFingerprint", "GetReference", "DeleteReference",
                                    "ListReferences", "Authorization", "CreateToken",
                                    "RevokeToken", "QueryAudit"}
    # the cases reach past the validation: some media decodes and some clips are answered
    assert report["codes"]["decode_media"].get("decoded", 0) > 0
    assert report["codes"]["MatchClip"].get("OK", 0) > 0
    assert report["codes"]["MatchFingerprint"].get("OK", 0) > 0
    assert report["codes"]["CreateToken"].get("OK", 0) > 0
    assert report["codes"]["QueryAudit"].get("OK", 0) > 0
    assert set(report["codes"]["Authorization"]) == {"UNAUTHENTICATED"}
