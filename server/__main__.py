"""`python -m server --data-dir DIR --listen HOST:PORT`: run the service in the foreground."""

from __future__ import annotations

import argparse

from server import options
from server.app import serve_options


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m server", description=__doc__)
    options.add_arguments(parser)
    args = parser.parse_args(argv)
    serve_options(args)


if __name__ == "__main__":
    main()
