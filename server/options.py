"""Server command-line options, shared by `python -m server` and `clipmatch serve`.

Kept free of heavy imports so the CLI can build its parser without loading the index.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

DEFAULT_DATA_DIR = "./data"
DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_RPC_THREADS = 8


def whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``minimum``."""

    def parse(text: str) -> int:
        if not text.isdigit() or int(text) < minimum:
            raise argparse.ArgumentTypeError(
                f"expected a whole number >= {minimum}, got {text!r}")
        return int(text)

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --data-dir, --listen, --rpc-threads and --ingest-processes to ``parser``."""
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
