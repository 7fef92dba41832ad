"""The `clipmatch` command: run the server, register, match, list, get and delete references,
manage API tokens and read the audit log.

Readable text by default; with --json, one JSON object per line on stdout, errors included,
so a crawler can pipe the output straight into a log or a queue. Calls carry the API token
in $CLIPMATCH_TOKEN.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from client.sdk import ClipmatchClient, ClipmatchError, default_target
from server import options as server_options

FileAction = Callable[[ClipmatchClient, str], dict[str, Any]]
DEFAULT_JOBS = 4
FAILS_EVERY_FILE = frozenset({"UNAVAILABLE", "UNAUTHENTICATED", "PERMISSION_DENIED"})
"""Errors that say nothing about the file: an unreachable server, a token missing, bad or
not allowed this call."""


def _rounded(value: Any, digits: int = 3) -> Any:
    """Floats rounded to ``digits`` decimals, recursively: JSON people can read."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {key: _rounded(item, digits) for key, item in value.items()}
    if isinstance(value, list):
        return [_rounded(item, digits) for item in value]
    return value


def _json_line(value: Any) -> str:
    return json.dumps(_rounded(value), ensure_ascii=False)


def _error(error: ClipmatchError) -> dict[str, str]:
    return {"code": error.code, "message": error.message}


def _report_error(error: ClipmatchError, as_json: bool, path: str | None = None) -> None:
    """Errors go to stderr as text, or to stdout as JSON so every input gets one line."""
    if as_json:
        tqdm.write(_json_line({"path": path, "error": _error(error)} if path else
                              {"error": _error(error)}), file=sys.stdout)
    else:
        prefix = f"{path}: " if path else ""
        tqdm.write(f"{prefix}error {error.code}: {error.message}", file=sys.stderr)


MEDIA_SUFFIXES = frozenset({
    ".aac", ".ac3", ".aif", ".aiff", ".amr", ".avi", ".flac", ".flv", ".m2ts", ".m4a", ".m4v",
    ".mka", ".mkv", ".mov", ".mp2", ".mp3", ".mp4", ".mpeg", ".mpg", ".mts", ".oga", ".ogg",
    ".ogv", ".opus", ".ts", ".wav", ".webm", ".wma", ".wmv", ".3gp"})
"""What a folder given to ``register`` or ``match`` is searched for (files named one by one
are always sent: the server says if one is not media)."""


def expand(paths: Sequence[str]) -> list[str]:
    """The files to send: each file as given, and for each folder the media files anywhere
    under it (by name, hidden ones skipped), sorted, so a catalogue folder is one argument."""
    found: list[str] = []
    for path in paths:
        if not os.path.isdir(path):
            found.append(path)
            continue
        for folder, subfolders, files in os.walk(path):
            subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
            found += [os.path.join(folder, name) for name in sorted(files)
                      if not name.startswith(".")
                      and os.path.splitext(name)[1].lower() in MEDIA_SUFFIXES]
    return found


def _for_each_file(client: ClipmatchClient, paths: Sequence[str], action: FileAction,
                   render: Callable[[str, dict[str, Any]], str], as_json: bool,
                   jobs: int = 1) -> int:
    """Run ``action`` on each path, ``jobs`` at a time, and print one line (or one per
    match) for each, in the order given.

    A failing file is reported and the rest still run; the exit code is 1 if any failed.
    An unreachable server or a refused token stops the run, since every other file would
    fail the same way.
    """
    failed = False
    show_progress = len(paths) > 1 and sys.stderr.isatty()
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        futures = {pool.submit(action, client, path): path for path in paths}
        for future in tqdm(futures, file=sys.stderr, unit="file", disable=not show_progress,
                           leave=False):
            path = futures[future]
            try:
                result = future.result()
            except ClipmatchError as error:
                _report_error(error, as_json, path)
                if error.code in FAILS_EVERY_FILE:
                    for pending in futures:
                        pending.cancel()
                    return 1
                failed = True
                continue
            tqdm.write(_json_line({"path": path, **result}) if as_json
                       else render(path, result), file=sys.stdout)
    return 1 if failed else 0


def _register(args: argparse.Namespace) -> FileAction:
    def action(client: ClipmatchClient, path: str) -> dict[str, Any]:
        ref = client.register(path, title=args.title, external_id=args.external_id)
        return {key: ref[key] for key in ("reference_id", "title", "duration_s")}

    return action


def _render_registered(path: str, ref: dict[str, Any]) -> str:
    return f'{path}: registered {ref["reference_id"]} "{ref["title"]}" ({ref["duration_s"]:.1f} s)'


MATCH_KEYS = ("reference_id", "title", "modality", "score", "query_start_s", "query_end_s",
              "reference_start_s", "reference_end_s", "speed")


def _match(client: ClipmatchClient, path: str) -> dict[str, Any]:
    result = client.match(path)
    return {"matches": [{key: m[key] for key in MATCH_KEYS} for m in result["matches"]],
            "elapsed_ms": result["elapsed_ms"]}


def _render_matches(path: str, result: dict[str, Any]) -> str:
    if not result["matches"]:
        return f"{path}: no match"
    return "\n".join(
        f'{path}: "{m["title"]}" {m["reference_start_s"]:.1f}–{m["reference_end_s"]:.1f} s '
        f'(clip {m["query_start_s"]:.1f}–{m["query_end_s"]:.1f} s) '
        f'score {m["score"]:.2f} speed {m["speed"]:.2f} ({m["modality"]})'
        for m in result["matches"])


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _render_reference(ref: dict[str, Any]) -> str:
    rows = {
        "reference_id": ref["reference_id"],
        "tenant": ref["tenant"],
        "title": ref["title"],
        "external_id": ref["external_id"],
        "metadata": ", ".join(f"{k}={v}" for k, v in sorted(ref["metadata"].items())),
        "duration": f'{ref["duration_s"]:.1f} s',
        "modalities": ", ".join(ref["modalities"]),
        "created": _when(ref["created_at"]),
        "content_sha256": ref["content_sha256"],
    }
    return "\n".join(f"{key:<15} {value}" for key, value in rows.items())


def _cmd_register(client: ClipmatchClient, args: argparse.Namespace) -> int:
    return _for_each_file(client, args.files, _register(args), _render_registered, args.json,
                          args.jobs)


def _cmd_match(client: ClipmatchClient, args: argparse.Namespace) -> int:
    return _for_each_file(client, args.files, _match, _render_matches, args.json, args.jobs)


def _cmd_list(client: ClipmatchClient, args: argparse.Namespace) -> int:
    references = client.list_all()
    if args.json:
        for ref in references:
            print(_json_line(ref))
        return 0
    for ref in references:
        print(f'{ref["reference_id"]}  {ref["duration_s"]:8.1f} s  {ref["tenant"]:<16}  '
              f'{ref["title"]}')
    print(f"{len(references)} reference{'' if len(references) == 1 else 's'}")
    return 0


def _cmd_get(client: ClipmatchClient, args: argparse.Namespace) -> int:
    ref = client.get(args.reference_id)
    print(_json_line(ref) if args.json else _render_reference(ref))
    return 0


def _cmd_delete(client: ClipmatchClient, args: argparse.Namespace) -> int:
    client.delete(args.reference_id)
    print(f"deleted {args.reference_id}")
    return 0


def _render_token(info: dict[str, Any]) -> str:
    state = f'revoked {_when(info["revoked_at"])}' if info["revoked_at"] else "valid"
    label = f'  "{info["label"]}"' if info["label"] else ""
    return (f'cm_{info["token_id"]}  {info["role"]:<13}  {info["tenant"]:<16}  '
            f'created {_when(info["created_at"])}  {state}{label}')


def _cmd_token_create(client: ClipmatchClient, args: argparse.Namespace) -> int:
    created = client.create_token(args.tenant, args.role, args.label)
    if args.json:
        print(_json_line(created))
        return 0
    print(created["token"])
    print(f'(a {args.role} token of tenant {args.tenant}, id cm_{created["info"]["token_id"]}; '
          "shown only now: the server keeps only a hash. Its holder sets CLIPMATCH_TOKEN to "
          "it.)", file=sys.stderr)
    return 0


def _cmd_token_list(client: ClipmatchClient, args: argparse.Namespace) -> int:
    for info in client.list_tokens(args.tenant):
        print(_json_line(info) if args.json else _render_token(info))
    return 0


def _cmd_token_revoke(client: ClipmatchClient, args: argparse.Namespace) -> int:
    info = client.revoke_token(args.token_id)
    print(_json_line(info) if args.json else f"revoked {_render_token(info)}")
    return 0


def _instant(text: str) -> float:
    """An argparse type: seconds since the Unix epoch, or an ISO 8601 date or time (UTC
    unless it says otherwise)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO 8601 date or time (2026-12-02, 2026-12-02T14:30) or seconds "
            f"since the Unix epoch, got {text!r}") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _render_audit(entry: dict[str, Any]) -> str:
    reference = f' {entry["reference_id"]}' if entry["reference_id"] else ""
    detail = json.dumps(_rounded(entry["detail"]), ensure_ascii=False)
    return (f'{_when(entry["at"])}  {entry["tenant"]:<16}  {entry["action"]:<12}  '
            f'by cm_{entry["token_id"]} ({entry["role"]}){reference}  {detail}')


def _cmd_audit(client: ClipmatchClient, args: argparse.Namespace) -> int:
    for entry in client.audit_all(args.tenant, args.action, args.since, args.until):
        print(_json_line(entry) if args.json else _render_audit(entry))
    return 0


def _cmd_health(client: ClipmatchClient, args: argparse.Namespace) -> int:
    status = client.health()
    print(f"{client.target}: {status}")
    return 0 if status == "SERVING" else 1


def _cmd_serve(args: argparse.Namespace) -> int:
    from server.app import serve_options  # the index loads only for this command

    serve_options(args)
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    """Open the data directory as the server would (rebuilding a damaged index) and report
    whether every reference can be matched; exit 1 if not."""
    from index.catalog import Catalog  # the index loads only for the commands that need it

    if not Path(args.data_dir, "catalog.sqlite").is_file():
        print(f"clipmatch check: {args.data_dir} holds no catalogue (no catalog.sqlite)",
              file=sys.stderr)
        return 2
    catalog = Catalog(args.data_dir)
    try:
        catalog.wait_for_index()
        report = catalog.check()
    finally:
        catalog.close()
    if args.json:
        print(_json_line(report))
    else:
        print(f"{report['data_dir']}: {report['references']} references")
        for name, index in report["indexes"].items():
            rebuilt = f"; rebuilt: {index['rebuilt']}" if index["rebuilt"] else ""
            print(f"  {name} index: {index['references']} references, {index['windows']} "
                  f"windows in {index['segments']} sealed segments{rebuilt}")
        for problem in report["problems"]:
            where = problem.get("reference_id") or f"{problem.get('index')} index"
            print(f"  problem: {where}: {problem['problem']}")
        if report["problems"]:
            print("  references listed with a problem cannot be matched: register their media "
                  "again (and delete the old entry)")
        else:
            print("  ok: every reference can be matched")
    return 1 if report["problems"] else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clipmatch", description="Register reference media and identify clips of it.")
    server_help = "server address (default $CLIPMATCH_SERVER, else 127.0.0.1:50051)"
    parser.add_argument("--server", default=default_target(), metavar="HOST:PORT",
                        help=server_help)
    # Sub-commands accept --server too; SUPPRESS keeps the global value when it is absent.
    remote = argparse.ArgumentParser(add_help=False)
    remote.add_argument("--server", default=argparse.SUPPRESS, metavar="HOST:PORT",
                        help=server_help)
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="one JSON object per line")
    batch = argparse.ArgumentParser(add_help=False)
    batch.add_argument("paths", nargs="+", metavar="PATH",
                       help="media files, or folders to search for media files")
    batch.add_argument("--jobs", type=server_options.whole_number(1), default=DEFAULT_JOBS,
                       metavar="N",
                       help=f"files sent at once (default {DEFAULT_JOBS}; the server "
                            "fingerprints them on all its cores)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the server in the foreground")
    server_options.add_arguments(serve)

    register = commands.add_parser("register", parents=[remote, as_json, batch],
                                   help="register reference media files")
    register.add_argument("--title", help="title (one file only; default: the file name)")
    register.add_argument("--external-id", default="", metavar="ID",
                          help="your own identifier for the reference")
    register.set_defaults(run=_cmd_register)

    match = commands.add_parser("match", parents=[remote, as_json, batch],
                                help="identify clips against the catalogue")
    match.set_defaults(run=_cmd_match)

    listing = commands.add_parser("list", parents=[remote, as_json],
                                  help="list every reference")
    listing.set_defaults(run=_cmd_list)

    get = commands.add_parser("get", parents=[remote, as_json], help="show one reference")
    get.add_argument("reference_id", metavar="ID")
    get.set_defaults(run=_cmd_get)

    delete = commands.add_parser("delete", parents=[remote], help="delete a reference")
    delete.add_argument("reference_id", metavar="REFERENCE_ID")
    delete.set_defaults(run=_cmd_delete)

    health = commands.add_parser("health", parents=[remote], help="check the server is up")
    health.set_defaults(run=_cmd_health)

    token = commands.add_parser("token", help="issue, list and revoke API tokens (admin)")
    token_commands = token.add_subparsers(dest="token_command", required=True,
                                          metavar="ACTION")
    create = token_commands.add_parser(
        "create", parents=[remote, as_json],
        help="issue a token; it is printed once (the server keeps only a hash)")
    create.add_argument("--tenant", required=True,
                        help="whose references it manages or matches against")
    create.add_argument("--role", required=True,
                        help="admin (everything, every tenant), rights_holder (register, list, "
                             "delete and match its tenant's references) or crawler (match "
                             "against its tenant's references)")
    create.add_argument("--label", default="", help="who or what it is for")
    create.set_defaults(run=_cmd_token_create)
    tokens = token_commands.add_parser("list", parents=[remote, as_json],
                                       help="every token (never their secrets)")
    tokens.add_argument("--tenant", default="", help="only this tenant's")
    tokens.set_defaults(run=_cmd_token_list)
    revoke = token_commands.add_parser("revoke", parents=[remote, as_json],
                                       help="revoke a token for good")
    revoke.add_argument("token_id", metavar="ID", help="the token's id, as `token list` shows")
    revoke.set_defaults(run=_cmd_token_revoke)

    audit = commands.add_parser("audit", parents=[remote, as_json],
                                help="registrations, deletions, matches and token changes, "
                                     "oldest first (admin)")
    audit.add_argument("--tenant", default="", help="only this tenant's")
    audit.add_argument("--action", default="",
                       help="only this action: register, delete, match, token_create or "
                            "token_revoke")
    audit.add_argument("--since", type=_instant, default=0.0, metavar="WHEN",
                       help="from this moment: ISO 8601 (UTC unless it says) or Unix seconds")
    audit.add_argument("--until", type=_instant, default=0.0, metavar="WHEN",
                       help="before this moment")
    audit.set_defaults(run=_cmd_audit)

    check = commands.add_parser(
        "check", parents=[as_json],
        help="verify a data directory (with no server running on it) and rebuild a damaged "
             "index from the stored fingerprints")
    check.add_argument("--data-dir", default=server_options.DEFAULT_DATA_DIR,
                       help=f"catalogue directory (default {server_options.DEFAULT_DATA_DIR})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _cmd_serve(args)
    if args.command == "check":
        return _cmd_check(args)
    if args.command in ("register", "match"):
        args.files = expand(args.paths)
        if not args.files:
            parser.error(f"no media files in {', '.join(args.paths)} (looked for names ending "
                         "in .mp4, .mkv, .mp3, .ogg, .wav and the like)")
    if args.command == "register" and args.title and len(args.files) > 1:
        parser.error("--title applies to a single file; register several files without it")
    with ClipmatchClient(args.server) as client:
        try:
            return args.run(client, args)
        except ClipmatchError as error:
            _report_error(error, getattr(args, "json", False))
            return 1
        except BrokenPipeError:  # e.g. `clipmatch list --json | head -1`: stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1


if __name__ == "__main__":
    sys.exit(main())
