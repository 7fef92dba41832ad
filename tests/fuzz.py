"""Hostile input for the decoders and every RPC, generated with Hypothesis from real media.

Seeds are short excerpts of the test fixtures in five containers (Ogg Opus, FLAC, MP3, WAV,
MP4 with H.264 and AAC); each case mutates one (truncated, bytes overwritten, a chunk repeated or
inserted, another file's header spliced in) or is made up outright (empty, random bytes,
huge or nonsensical fingerprint fields, absurd page sizes and ids, token and audit fields).
Every RPC, called with the admin token, must end with a status a client can act on: OK,
INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS or RESOURCE_EXHAUSTED, within
``CALL_DEADLINE_S``; with made-up or mangled authorization metadata, with UNAUTHENTICATED.
The decoders must return or raise ``MediaError``. ``python -m tests.fuzz --cases N`` runs N
cases in all, shared among the targets, against a server of its own with small limits, and
reports the status codes seen and the server's memory (``make fuzz``: 10,000).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.sdk import with_token
from clipmatch.v1 import clipmatch_pb2 as pb
from clipmatch.v1 import clipmatch_pb2_grpc as pb_grpc
from fingerprint import audio, video
from fingerprint.decode import MediaError, decode_media
from server.access import ACTIONS, CRAWLER, ROLES, TENANT
from tests.conftest import SERVER_COMMAND, ServerProcess
from tests.media import encode, excerpt, fixture, load, video_clip, video_fixture

ANSWERED = frozenset({"OK", "INVALID_ARGUMENT", "NOT_FOUND", "ALREADY_EXISTS",
                      "RESOURCE_EXHAUSTED"})
REFUSED = frozenset({"UNAUTHENTICATED"})
"""What a call without a valid token must get, whatever it asks."""
CALL_DEADLINE_S = 60.0
"""A call not answered by then counts as a hang."""
MAX_SERVER_RSS_MB = 2048
"""Memory the server may hold after the run: the limits bound what one request can make it
allocate, so hostile input must not grow it past a catalogue's own needs."""
CHUNK = 64 * 1024
LIMITS = ("--max-clip-mb", "2", "--max-reference-mb", "4", "--max-clip-seconds", "30",
          "--rate-limit-rps", "0")
"""Small enough that long uploads reach them in a few cases; no rate limit, so that every
case reaches the call it is about."""


def seed_media(directory: Path) -> list[bytes]:
    """Real media to mutate: 4 s of a fixture as Ogg Opus, FLAC, MP3 and WAV, and of a film
    as MP4."""
    samples = excerpt(load(fixture("knolls")), 10.0, 4.0)
    paths = [encode(directory / "seed.ogg", samples, codec="libopus", bit_rate=48_000),
             encode(directory / "seed.flac", samples, codec="flac"),
             encode(directory / "seed.mp3", samples, codec="libmp3lame", bit_rate=64_000),
             encode(directory / "seed.wav", samples),
             video_clip(video_fixture("intro_excerpt"), directory / "seed.mp4", 2.0, 4.0)]
    return [path.read_bytes() for path in paths]


def mutated(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    """A seed with one hostile change, or bytes made up outright."""

    @st.composite
    def one(draw: Callable[..., Any]) -> bytes:
        data = bytearray(draw(st.sampled_from(seeds)))
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["truncate", "overwrite", "repeat", "insert", "splice",
                                     "zero", "long", "claims"]))
        if kind == "long":  # past the upload limits
            return bytes(data) * draw(st.integers(2, 60))
        if kind == "claims" and data[:4] == b"RIFF":  # WAV: channels, rate, data size
            for offset, width in ((22, 2), (24, 4), (40, 4)):
                value = draw(st.integers(0, 2 ** (8 * width) - 1))
                data[offset:offset + width] = value.to_bytes(width, "little")
            return bytes(data)
        if kind == "truncate":
            return bytes(data[:at])
        if kind == "overwrite":
            patch = draw(st.binary(min_size=1, max_size=64))
            data[at:at + len(patch)] = patch
        elif kind == "repeat":
            length = draw(st.integers(1, 4096))
            data[at:at] = data[at:at + length] * draw(st.integers(2, 50))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4096))
        elif kind == "splice":  # another container's header on this one's body
            other = draw(st.sampled_from(seeds))
            data[:at] = other[:draw(st.integers(1, min(len(other), 4096)))]
        else:
            data[at:at + draw(st.integers(1, 65536))] = bytes(min(65536, len(data) - at))
        return bytes(data)

    return st.one_of(one(), st.binary(max_size=8192), st.just(b""))


filenames = st.one_of(
    st.sampled_from(["clip.mp3", "clip.wav", "clip.mp4", "clip.ogg", "clip.exe", "clip",
                     ".mp3", "../../etc/passwd", "C:\\clips\\a.flac"]),
    st.text(max_size=300))
floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
sizes = st.one_of(st.integers(0, 4096), st.sampled_from([2**31 - 1, 2**32 - 1]))


def band_values(rows: int) -> bytes:
    """``rows`` frames of made-up band energies, as the wire carries them."""
    return np.random.default_rng(rows).standard_normal(
        (rows, audio.N_BANDS)).astype("<f2").tobytes()


well_formed = st.builds(lambda rows: pb.MatchFingerprintRequest(audio=pb.AudioFingerprint(
    format=audio.FORMAT, frame_rate_hz=audio.FRAME_RATE_HZ, num_bands=audio.N_BANDS,
    values=band_values(rows))), st.integers(1, 3000))
"""Requests the server must answer with matches (none, for made-up energies)."""


@st.composite
def hostile_fingerprints(draw: Callable[..., Any]) -> pb.MatchFingerprintRequest:
    """Audio and/or video fingerprints with fields right, wrong or absurd."""
    request = pb.MatchFingerprintRequest()
    if draw(st.booleans()):
        bands = draw(st.one_of(st.just(audio.N_BANDS), sizes))
        request.audio.CopyFrom(pb.AudioFingerprint(
            format=draw(st.one_of(st.just(audio.FORMAT), st.text(max_size=20))),
            frame_rate_hz=draw(st.one_of(st.just(audio.FRAME_RATE_HZ), floats)),
            num_bands=bands, values=draw(st.one_of(st.binary(max_size=65536),
                                                   st.builds(band_values, st.integers(0, 800))))))
    if draw(st.booleans()):
        width, height = draw(sizes), draw(sizes)
        request.video.CopyFrom(pb.VideoFingerprint(
            format=draw(st.one_of(st.just(video.FORMAT), st.text(max_size=20))),
            width=width, height=height, pixels=draw(st.binary(max_size=65536)),
            times=draw(st.lists(floats, max_size=64))))
    return request


def authorization(token: str) -> st.SearchStrategy[str]:
    """Authorization metadata that is not a valid token: made up (printable ASCII, as gRPC
    allows), or ``token`` cut short, with a character changed or added, or another id, after
    one of several schemes."""
    printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=200)

    @st.composite
    def mangled(draw: Callable[..., Any]) -> str:
        at = draw(st.integers(0, len(token) - 1))
        kind = draw(st.sampled_from(["truncate", "change", "add", "other-id"]))
        if kind == "truncate":
            value = token[:at]
        elif kind == "change":
            value = token[:at] + ("A" if token[at] != "A" else "B") + token[at + 1:]
        elif kind == "add":
            value = token[:at] + draw(printable.filter(bool)) + token[at:]
        else:
            value = "cm_" + draw(st.text("0123456789abcdef", min_size=12, max_size=12).filter(
                lambda other: other != token[3:15])) + token[15:]
        return draw(st.sampled_from(["Bearer ", "bearer ", "Basic ", "", "Bearer  "])) + value

    return st.one_of(printable, mangled())


def _stream(header: Any, data: bytes, request_type: type) -> Iterator[Any]:
    yield request_type(header=header)
    for start in range(0, len(data), CHUNK):
        yield request_type(chunk=data[start:start + CHUNK])


class Tally:
    """Status codes seen per target, and the cases that were not answered properly."""

    def __init__(self) -> None:
        self.codes: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter)
        self.failures: list[str] = []

    def call(self, target: str, invoke: Callable[[], Any],
             answered: frozenset[str] = ANSWERED) -> None:
        try:
            invoke()
            code, details = "OK", ""
        except grpc.RpcError as exc:
            code, details = exc.code().name, exc.details()
        if code not in answered:
            self.failures.append(f"{target}: {code} {details!r}")
        self.codes[target][code] += 1


def rpc_targets(raw: grpc.Channel, admin_token: str, seeds: list[bytes], tally: Tally
                ) -> dict[str, Callable[[int], None]]:
    """Each RPC as a Hypothesis test of ``cases`` examples, tallying the answers: with the
    admin token (ids are made up or those stored when it starts; deletions run after the
    matches; revocations never meet the admin token), and one of several RPCs with
    authorization metadata that is not a valid token."""
    channel = with_token(raw, admin_token)
    references = pb_grpc.ReferenceServiceStub(channel)
    matching = pb_grpc.MatchServiceStub(channel)
    admin = pb_grpc.AdminServiceStub(channel)
    deadline = {"timeout": CALL_DEADLINE_S}

    def run(strategy: st.SearchStrategy, case: Callable[[Any], None]) -> Callable[[int], None]:
        def cases(count: int) -> None:
            given(strategy)(settings(
                max_examples=count, deadline=None, database=None, derandomize=True,
                suppress_health_check=list(HealthCheck))(case))()
        return cases

    media = mutated(seeds)
    stored = [ref.reference_id for ref in references.ListReferences(
        pb.ListReferencesRequest(), **deadline).references]
    ids = st.one_of(st.text(max_size=200), st.sampled_from(stored))
    revocable = [admin.CreateToken(pb.CreateTokenRequest(tenant="fuzz", role=CRAWLER),
                                   **deadline).info.token_id for _ in range(3)]
    unauthorised = {
        "ListReferences": lambda metadata: pb_grpc.ReferenceServiceStub(raw).ListReferences(
            pb.ListReferencesRequest(), metadata=metadata, **deadline),
        "MatchClip": lambda metadata: pb_grpc.MatchServiceStub(raw).MatchClip(
            _stream(pb.MatchClipHeader(filename="x.ogg"), seeds[0], pb.MatchClipRequest),
            metadata=metadata, **deadline),
        "CreateToken": lambda metadata: pb_grpc.AdminServiceStub(raw).CreateToken(
            pb.CreateTokenRequest(tenant="fuzz", role="admin"), metadata=metadata, **deadline),
    }
    return {
        "Authorization": run(
            st.tuples(st.sampled_from(sorted(unauthorised)),
                      st.one_of(authorization(admin_token).map(lambda v: [("authorization", v)]),
                                st.just([]))),
            lambda args: tally.call("Authorization", lambda: unauthorised[args[0]](args[1]),
                                    REFUSED)),
        "CreateToken": run(
            st.tuples(st.one_of(st.from_regex(TENANT, fullmatch=True), st.text(max_size=100)),
                      st.one_of(st.sampled_from(ROLES), st.text(max_size=30)),
                      st.text(max_size=300)),
            lambda args: tally.call("CreateToken", lambda: admin.CreateToken(
                pb.CreateTokenRequest(tenant=args[0], role=args[1], label=args[2]),
                **deadline))),
        "RevokeToken": run(st.one_of(st.text(max_size=100), st.sampled_from(revocable)),
                           lambda token_id: tally.call("RevokeToken", lambda: admin.RevokeToken(
                               pb.RevokeTokenRequest(token_id=token_id), **deadline))),
        "QueryAudit": run(
            st.tuples(st.one_of(st.just("fuzz"), st.text(max_size=70)),
                      st.one_of(st.sampled_from(ACTIONS), st.text(max_size=20)),
                      *[st.one_of(st.floats(0, 4e9), floats)] * 2,
                      st.one_of(st.integers(0, 1000), st.integers(-2**31, 2**31 - 1)),
                      st.one_of(st.just(""), st.text(max_size=30))),
            lambda args: tally.call("QueryAudit", lambda: admin.QueryAudit(
                pb.QueryAuditRequest(tenant=args[0], action=args[1], since=args[2],
                                     until=args[3], page_size=args[4], page_token=args[5]),
                **deadline))),
        "MatchClip": run(st.tuples(media, filenames), lambda args: tally.call(
            "MatchClip", lambda: matching.MatchClip(_stream(
                pb.MatchClipHeader(filename=args[1]), args[0], pb.MatchClipRequest),
                **deadline))),
        "CreateReference": run(
            st.tuples(media, filenames, st.text(max_size=300),
                      st.dictionaries(st.text(max_size=40), st.text(max_size=200),
                                      max_size=20)),
            lambda args: tally.call("CreateReference", lambda: references.CreateReference(
                _stream(pb.ReferenceHeader(filename=args[1], title=args[2],
                                           metadata=args[3]), args[0],
                        pb.CreateReferenceRequest), **deadline))),
        "MatchFingerprint": run(
            st.one_of(well_formed, hostile_fingerprints()), lambda request: tally.call(
                "MatchFingerprint", lambda: matching.MatchFingerprint(request, **deadline))),
        "GetReference": run(ids, lambda rid: tally.call(
            "GetReference", lambda: references.GetReference(
                pb.GetReferenceRequest(reference_id=rid), **deadline))),
        "DeleteReference": run(ids, lambda rid: tally.call(
            "DeleteReference", lambda: references.DeleteReference(
                pb.DeleteReferenceRequest(reference_id=rid), **deadline))),
        "ListReferences": run(
            st.tuples(st.integers(-2**31, 2**31 - 1), st.text(max_size=50)),
            lambda args: tally.call("ListReferences", lambda: references.ListReferences(
                pb.ListReferencesRequest(page_size=args[0], page_token=args[1]),
                **deadline))),
    }


def decoder_cases(seeds: list[bytes], count: int, tally: Tally) -> None:
    """``decode_media`` on mutated media in this process: it returns or raises MediaError."""

    @settings(max_examples=count, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(mutated(seeds))
    def case(data: bytes) -> None:
        try:
            decode_media(data)
            code = "decoded"
        except MediaError:
            code = "MediaError"
        except Exception as exc:  # anything else is the finding this harness looks for
            code = type(exc).__name__
            tally.failures.append(f"decode_media: {code}: {exc}")
        tally.codes["decode_media"][code] += 1

    case()


@contextmanager
def fuzzed_server(directory: Path) -> Iterator[tuple[ServerProcess, grpc.Channel]]:
    """A real server over a fresh data directory holding one reference, and a channel to it
    (without a token)."""
    server = ServerProcess(directory / "data", (*SERVER_COMMAND, *LIMITS))
    server.start()
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.ReferenceServiceStub(with_token(channel, server.admin_token))
            stub.CreateReference(_stream(pb.ReferenceHeader(title="knolls"),
                                         fixture("knolls").read_bytes(),
                                         pb.CreateReferenceRequest))
            yield server, channel
    finally:
        server.stop()


def server_rss_mb(server: ServerProcess) -> float:
    status = Path(f"/proc/{server.pid}/status").read_text()
    return int(next(line for line in status.splitlines()
                    if line.startswith("VmRSS:")).split()[1]) / 1024


def run(cases: int, directory: Path) -> dict[str, Any]:
    """``cases`` examples in all, shared among the targets; the report says what each
    answered."""
    tally = Tally()
    seeds = seed_media(directory)
    with fuzzed_server(directory) as (server, channel):
        targets = rpc_targets(channel, server.admin_token, seeds, tally)
        share = -(-cases // (len(targets) + 1))  # rounded up: at least ``cases`` in all
        decoder_cases(seeds, share, tally)
        for target in targets.values():
            target(share)
        rss = server_rss_mb(server)
        alive = server.alive
    return {"cases": sum(sum(c.values()) for c in
                                                    tally.codes.values()),
            "codes": {target: dict(counts) for target, counts in tally.codes.items()},
            "failures": tally.failures, "server_rss_mb": round(rss), "server_alive": alive,
            "crashed_calls": len(server.events("rpc_crashed"))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10_000,
                        help="examples in all (default %(default)s)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="clipmatch-fuzz-") as tmp:
        report = run(args.cases, Path(tmp))
    print(json.dumps(report, indent=1))
    ok = (not report["failures"] and report["server_alive"] and not report["crashed_calls"]
          and report["server_rss_mb"] <= MAX_SERVER_RSS_MB)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
