"""The real `clipmatch` command line against the real server: output shapes and exit codes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, ServerProcess
from tests.media import Clip, fixture

CLI = (sys.executable, "-m", "client.cli")
MATCH_KEYS = {"reference_id", "title", "modality", "score", "query_start_s", "query_end_s",
              "reference_start_s", "reference_end_s", "speed"}


def clipmatch(*args: str | Path, server: ServerProcess | None = None,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user would; a ``server`` goes in --server, its admin token in
    CLIPMATCH_TOKEN (unless ``env`` sets another)."""
    flags = ["--server", server.target] if server else []
    token = {"CLIPMATCH_TOKEN": server.admin_token} if server else {}
    return subprocess.run([*CLI, *flags, *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={**os.environ, **token, **(env or {})},
                          stdin=subprocess.DEVNULL)


def json_lines(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def decimals(value: float) -> int:
    text = repr(value)
    return len(text.split(".")[1]) if "." in text else 0


@pytest.fixture(scope="module")
def registered(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory
               ) -> dict[str, dict[str, Any]]:
    """Two references registered through the CLI, by title; a bad file fails on its own."""
    bad = tmp_path_factory.mktemp("bad") / "not-media.mp3"
    bad.write_text("not audio at all")
    result = clipmatch("register", fixture("battle"), bad, fixture("knolls"), "--json",
                       server=server)
    assert result.returncode == 1, result.stderr
    lines = json_lines(result)
    assert [line["path"] for line in lines] == [str(fixture("battle")), str(bad),
                                                 str(fixture("knolls"))]
    failed = lines.pop(1)
    assert failed["error"]["code"] == "INVALID_ARGUMENT"
    assert failed["error"]["message"]
    for line in lines:
        assert line.keys() == {"path", "reference_id", "title", "duration_s"}
        assert decimals(line["duration_s"]) <= 3
    return {line["title"]: line for line in lines}


def test_register_readable_output(registered: dict[str, dict[str, Any]],
                                  server: ServerProcess) -> None:
    result = clipmatch("register", fixture("loyalists"), "--title", "Loyalists",
                       "--external-id", "wesnoth:loyalists", server=server)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{fixture('loyalists')}: registered ")
    assert '"Loyalists" (30.0 s)' in result.stdout


def test_register_title_with_several_files_is_a_usage_error(server: ServerProcess) -> None:
    result = clipmatch("register", fixture("battle"), fixture("knolls"), "--title", "x",
                       server=server)
    assert result.returncode == 2
    assert "--title" in result.stderr


def test_match_json_lines(registered: dict[str, dict[str, Any]], server: ServerProcess,
                          tmp_path: Path) -> None:
    found = Clip("battle", 10.0, 8.0).write(tmp_path)
    unknown = Clip("wanderer_not_in_catalogue", 2.0, 8.0).write(tmp_path)
    result = clipmatch("match", found, unknown, "--json", server=server)
    assert result.returncode == 0, result.stderr
    hit, miss = json_lines(result)
    assert hit.keys() == miss.keys() == {"path", "matches", "elapsed_ms"}
    assert (hit["path"], miss["path"], miss["matches"]) == (str(found), str(unknown), [])
    match = hit["matches"][0]
    assert match.keys() == MATCH_KEYS
    assert (match["title"], match["reference_id"]) == (
        "battle.ogg", registered["battle.ogg"]["reference_id"])
    assert all(decimals(match[key]) <= 3 for key in MATCH_KEYS - {"reference_id", "title",
                                                                   "modality"})


def test_match_readable_output(registered: dict[str, dict[str, Any]], server: ServerProcess,
                               tmp_path: Path) -> None:
    found = Clip("knolls", 20.0, 8.0).write(tmp_path)
    unknown = Clip("speech_not_in_catalogue", 0.0, 8.0).write(tmp_path)
    result = clipmatch("match", found, unknown, server=server)
    assert result.returncode == 0, result.stderr
    first, *_, last = result.stdout.splitlines()
    assert first.startswith(f'{found}: "knolls.ogg" ')
    assert "(clip " in first
    assert " score " in first
    assert " speed " in first
    assert first.endswith("(audio)")
    assert last == f"{unknown}: no match"


def test_list_get_delete(registered: dict[str, dict[str, Any]], server: ServerProcess) -> None:
    listed = json_lines(clipmatch("list", "--json", server=server))
    assert {ref["reference_id"] for ref in registered.values()} <= {
        ref["reference_id"] for ref in listed}
    readable = clipmatch("list", server=server).stdout.splitlines()
    assert readable[-1] == f"{len(listed)} references"

    reference_id = registered["knolls.ogg"]["reference_id"]
    got = json_lines(clipmatch("get", reference_id, "--json", server=server))
    assert got[0]["title"] == "knolls.ogg"
    assert "title           knolls.ogg" in clipmatch("get", reference_id,
                                                     server=server).stdout

    deleted = clipmatch("delete", reference_id, server=server)
    assert (deleted.returncode, deleted.stdout) == (0, f"deleted {reference_id}\n")
    gone = clipmatch("get", reference_id, server=server)
    assert gone.returncode == 1
    assert gone.stderr.startswith("error NOT_FOUND: ")


def test_tokens_issued_listed_used_and_revoked(registered: dict[str, dict[str, Any]],
                                               server: ServerProcess, tmp_path: Path) -> None:
    """An admin issues a crawler token (printed alone on stdout, for a script to keep); the
    crawler matches with it from CLIPMATCH_TOKEN but may not list; the audit shows its match;
    once revoked it is refused, and so is a call with no token, saying what to do."""
    created = clipmatch("token", "create", "--tenant", "default", "--role", "crawler",
                        "--label", "cli crawler", server=server)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("cm_") and "shown only now" in created.stderr
    token_id = token.split("_")[1]
    listed = json_lines(clipmatch("token", "list", "--json", server=server))
    assert {"token_id": token_id, "role": "crawler", "label": "cli crawler"}.items() <= next(
        t for t in listed if t["token_id"] == token_id).items()
    assert token not in clipmatch("token", "list", server=server).stdout

    crawler = {"CLIPMATCH_TOKEN": token}
    clip = Clip("battle", 5.0, 6.0).write(tmp_path)
    found = clipmatch("match", clip, "--json", server=server, env=crawler)
    assert json_lines(found)[0]["matches"][0]["title"] == "battle.ogg"
    denied = clipmatch("list", server=server, env=crawler)
    assert denied.returncode == 1 and denied.stderr.startswith("error PERMISSION_DENIED: ")

    audit = json_lines(clipmatch("audit", "--action", "match", "--json", server=server))
    assert [e["token_id"] for e in audit][-1] == token_id
    readable = clipmatch("audit", "--tenant", "default", "--since", "2000-01-01",
                         server=server).stdout
    assert f"by cm_{token_id} (crawler)" in readable and " register " in readable
    bad_time = clipmatch("audit", "--since", "yesterday", server=server)
    assert bad_time.returncode == 2 and "ISO 8601" in bad_time.stderr

    revoked = clipmatch("token", "revoke", token_id, server=server)
    assert revoked.returncode == 0 and revoked.stdout.startswith(f"revoked cm_{token_id}")
    for env in (crawler, {"CLIPMATCH_TOKEN": ""}):
        refused = clipmatch("match", clip, server=server, env=env)
        assert refused.returncode == 1
        assert "error UNAUTHENTICATED: " in refused.stderr and "CLIPMATCH_TOKEN" in refused.stderr
    bad_role = clipmatch("token", "create", "--tenant", "x", "--role", "boss", server=server)
    assert bad_role.returncode == 1 and "rights_holder" in bad_role.stderr


def test_health_uses_the_environment(server: ServerProcess) -> None:
    result = clipmatch("health", env={"CLIPMATCH_SERVER": server.target})
    assert (result.returncode, result.stdout) == (0, f"{server.target}: SERVING\n")


def test_unreachable_server_says_how_to_start_one() -> None:
    with socket.socket() as probe:  # a port nothing listens on once the probe closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = clipmatch("health", env={"CLIPMATCH_SERVER": f"127.0.0.1:{port}"})
    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stderr
    assert "clipmatch serve" in result.stderr


def test_serve_command_runs_and_stops_cleanly(tmp_path: Path) -> None:
    process = ServerProcess(tmp_path / "data", command=(*CLI, "serve"))
    process.start()
    assert process.stop() == 0
    assert process.events("stopped")


def test_register_a_folder_several_files_at_once(tmp_path: Path) -> None:
    """A folder registers the media files anywhere under it (not notes, not hidden files),
    sent several at a time to a server fingerprinting them in two processes, and reported
    in path order; the references then match."""
    folder = tmp_path / "catalogue"
    (folder / "wesnoth" / "more").mkdir(parents=True)
    for name, where in (("battle", "wesnoth"), ("knolls", "wesnoth/more"),
                        ("loyalists", ".")):
        (folder / where / f"{name}.ogg").write_bytes(fixture(name).read_bytes())
    (folder / "notes.txt").write_text("not media")
    (folder / "wesnoth" / ".hidden.ogg").write_bytes(fixture("battle").read_bytes())
    process = ServerProcess(tmp_path / "data", command=(*CLI, "serve",
                                                        "--ingest-processes", "2"))
    process.start()
    try:
        result = clipmatch("register", folder, "--jobs", "3", "--json", server=process)
        assert result.returncode == 0, result.stderr
        assert [line["path"] for line in json_lines(result)] == [
            str(folder / "loyalists.ogg"), str(folder / "wesnoth" / "battle.ogg"),
            str(folder / "wesnoth" / "more" / "knolls.ogg")]
        clip = Clip("knolls", 12.0, 6.0).write(tmp_path)
        found = json_lines(clipmatch("match", clip, "--json", server=process))
        assert found[0]["matches"][0]["title"] == "knolls.ogg"
        empty = tmp_path / "empty"
        empty.mkdir()
        result = clipmatch("register", empty, server=process)
        assert result.returncode == 2
        assert "no media files" in result.stderr
    finally:
        assert process.stop() == 0


def test_check_finds_damage_rebuilds_the_index_and_names_lost_references(
        tmp_path: Path) -> None:
    """A damaged index file is rebuilt from the fingerprints; a lost fingerprint file is
    named (its reference cannot be matched) without keeping the others from matching."""
    from index.catalog import Catalog

    data = tmp_path / "data"
    catalog = Catalog(data)
    kept = catalog.register(fixture("knolls"), title="knolls")
    lost = catalog.register(fixture("battle"), title="battle")
    catalog.close()
    healthy = clipmatch("check", "--data-dir", data, "--json")
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    report = json.loads(healthy.stdout)
    assert report["problems"] == [] and report["indexes"]["audio"]["references"] == 2
    assert report["indexes"]["audio"]["rebuilt"] == ""

    segment = sorted((data / "index" / "audio").glob("segment-*.faiss"))[0]
    segment.write_bytes(b"not a FAISS index")
    (data / "fingerprints" / f"{lost.reference_id}.npz").unlink()
    damaged = clipmatch("check", "--data-dir", data, "--json")
    assert damaged.returncode == 1
    report = json.loads(damaged.stdout)
    assert "unusable" in report["indexes"]["audio"]["rebuilt"]
    assert report["indexes"]["audio"]["references"] == 1
    assert [p["reference_id"] for p in report["problems"]] == [lost.reference_id]
    readable = clipmatch("check", "--data-dir", data)
    assert "register their media again" in readable.stdout and lost.reference_id in readable.stdout

    catalog = Catalog(data)
    clip = Clip("knolls", 12.0, 8.0).write(tmp_path)
    assert [m.reference_id for m in catalog.match_media(clip)][:1] == [kept.reference_id]
    catalog.close()
    assert clipmatch("check", "--data-dir", tmp_path / "nowhere").returncode == 2
