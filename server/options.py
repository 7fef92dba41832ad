"""Server command-line options, shared by `python -m server` and `clipmatch serve`.

Kept free of heavy imports so the CLI can build its parser without loading the index.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_DATA_DIR = "./data"
DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_RPC_THREADS = 8
DEFAULT_MAX_REFERENCE_MB = 4096
DEFAULT_MAX_CLIP_MB = 256
DEFAULT_MAX_CLIP_S = 900
DEFAULT_RATE_LIMIT_RPS = 50
DEFAULT_RATE_LIMIT_BURST = 100


MB = 1_000_000


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server: past a limit the call ends with
    RESOURCE_EXHAUSTED and a message naming the limit, before the work it would cost."""

    max_reference_bytes: int = DEFAULT_MAX_REFERENCE_MB * MB
    max_clip_bytes: int = DEFAULT_MAX_CLIP_MB * MB
    max_clip_s: float = DEFAULT_MAX_CLIP_S

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Limits:
        return cls(args.max_reference_mb * MB, args.max_clip_mb * MB,
                   float(args.max_clip_seconds))


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of the server's TLS: its certificate chain and key, and for mutual TLS the
    certificate authority whose client certificates it accepts (every other client is
    refused during the handshake)."""

    cert: str
    key: str
    client_ca: str = ""

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TlsFiles | None:
        if not (args.tls_cert or args.tls_key or args.tls_client_ca):
            return None
        if not (args.tls_cert and args.tls_key):
            raise SystemExit("TLS needs both --tls-cert and --tls-key (PEM files); "
                             "--tls-client-ca adds mutual TLS on top of them")
        return cls(args.tls_cert, args.tls_key, args.tls_client_ca or "")


@dataclass(frozen=True)
class AuthOptions:
    """Access control (``server.access``): when ``enabled``, every call but health checks and
    reflection needs an API token, and each token may make ``rate_limit_rps`` calls a second
    on average, ``rate_limit_burst`` at once (a rate of 0: no limit). Disabled (--no-auth,
    loopback only), every caller acts as an admin."""

    enabled: bool = True
    rate_limit_rps: float = DEFAULT_RATE_LIMIT_RPS
    rate_limit_burst: int = DEFAULT_RATE_LIMIT_BURST

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> AuthOptions:
        return cls(not args.no_auth, float(args.rate_limit_rps), args.rate_limit_burst)


DEFAULT_AUTH = AuthOptions()


def whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``minimum``."""

    def parse(text: str) -> int:
        if not text.isdigit() or int(text) < minimum:
            raise argparse.ArgumentTypeError(
                f"expected a whole number >= {minimum}, got {text!r}")
        return int(text)

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --data-dir, --listen, --rpc-threads, --ingest-processes, the limits, TLS and
    access control to ``parser``."""
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                        help=f"catalogue directory, created if absent (default {DEFAULT_DATA_DIR})")
    parser.add_argument("--listen", default=DEFAULT_LISTEN,
                        help=f"HOST:PORT to listen on; port 0 picks a free one "
                             f"(default {DEFAULT_LISTEN})")
    parser.add_argument("--rpc-threads", type=whole_number(1), default=DEFAULT_RPC_THREADS,
                        metavar="N", help="calls served at once; more wait in line "
                                          "(default %(default)s)")
    parser.add_argument("--ingest-processes", type=whole_number(0), default=os.cpu_count() or 1,
                        metavar="N",
                        help="processes that fingerprint registrations in parallel, 0 for none "
                             "(default: one per CPU core, here %(default)s)")
    limits = parser.add_argument_group("limits (a request past one is refused with "
                                       "RESOURCE_EXHAUSTED, nothing stored)")
    limits.add_argument("--max-reference-mb", type=whole_number(1),
                        default=DEFAULT_MAX_REFERENCE_MB, metavar="MB",
                        help="largest reference upload (default %(default)s)")
    limits.add_argument("--max-clip-mb", type=whole_number(1), default=DEFAULT_MAX_CLIP_MB,
                        metavar="MB", help="largest clip upload to match (default %(default)s)")
    limits.add_argument("--max-clip-seconds", type=whole_number(1), default=DEFAULT_MAX_CLIP_S,
                        metavar="S", help="longest clip to match, sent as media or as "
                                          "fingerprints (default %(default)s)")
    tls = parser.add_argument_group("TLS (without it the server speaks plain gRPC: keep it "
                                    "on loopback or behind a TLS proxy)")
    tls.add_argument("--tls-cert", metavar="PEM", help="the server's certificate chain")
    tls.add_argument("--tls-key", metavar="PEM", help="the server's private key")
    tls.add_argument("--tls-client-ca", metavar="PEM",
                     help="accept only clients with a certificate from this CA (mutual TLS)")
    auth = parser.add_argument_group("access control (every call but health checks needs an "
                                     "API token; see README, \"Access control\")")
    auth.add_argument("--no-auth", action="store_true",
                      help="DEVELOPMENT ONLY: no tokens, every caller acts as admin; refused "
                           "unless --listen is a loopback address")
    auth.add_argument("--rate-limit-rps", type=whole_number(0), default=DEFAULT_RATE_LIMIT_RPS,
                      metavar="N", help="calls a second each token may make on average, 0 for "
                                        "no limit (default %(default)s)")
    auth.add_argument("--rate-limit-burst", type=whole_number(1),
                      default=DEFAULT_RATE_LIMIT_BURST, metavar="N",
                      help="calls a token may make at once (default %(default)s)")
