"""Fixtures that run the REAL server as a subprocess on a free loopback port.

The server logs one JSON object per line on stderr; the fixture reads the port it bound from
the "serving" event and keeps every log line for assertions (and what it prints on stdout:
the admin token of a first start). Clients act with the admin token the first start left in
the data directory. Teardown stops it with SIGTERM and checks it shut down cleanly, with no
request having crashed.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

from client.sdk import ClipmatchClient, with_token
from server.access import ADMIN_TOKEN_FILE

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
SERVER_COMMAND = (sys.executable, "-m", "server")


class ServerProcess:
    """One server process over ``data_dir``; start, stop and restart it like an operator."""

    def __init__(self, data_dir: Path, command: Sequence[str] = SERVER_COMMAND,
                 client_options: dict[str, Any] | None = None) -> None:
        """``client_options``: how a client must connect (TLS files) for the start check."""
        self.data_dir = data_dir
        self.command = list(command)
        self.client_options = client_options or {}
        self.target = ""
        self.logs: list[dict[str, Any]] = []
        self.printed: list[str] = []
        """stdout lines, of every start"""
        self._process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        process = subprocess.Popen(
            [*self.command, "--data-dir", str(self.data_dir), "--listen", "127.0.0.1:0"],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        self._process = process
        serving = threading.Event()

        def printed() -> None:
            self.printed.extend(line.rstrip("\n") for line in process.stdout)

        def drain() -> None:  # keep reading, or a full pipe would block the server's logging
            for line in process.stderr:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    entry = {"event": "non_json_output", "line": line.rstrip()}
                self.logs.append(entry)
                if entry.get("event") == "serving":
                    self.target = entry["listen"]
                    serving.set()

        threading.Thread(target=drain, daemon=True).start()
        threading.Thread(target=printed, daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not serving.wait(0.1):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"server did not start; its last output: {self.logs[-10:]}")
        with ClipmatchClient(self.target, **self.client_options) as client:
            assert client.health() == "SERVING"

    @property
    def admin_token(self) -> str:
        """The admin token the first start issued."""
        return (self.data_dir / ADMIN_TOKEN_FILE).read_text().strip()

    def client(self, token: str | None = None) -> ClipmatchClient:
        """An SDK client acting with ``token``, by default the admin token."""
        return ClipmatchClient(self.target, token=token or self.admin_token,
                               **self.client_options)

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self) -> int:
        """SIGTERM, as a supervisor would send; returns the exit code."""
        assert self._process is not None
        self._process.send_signal(signal.SIGTERM)
        return self._process.wait(STOP_TIMEOUT_S)

    def kill(self) -> None:
        """SIGKILL, as a power cut would end it: no clean-up runs."""
        assert self._process is not None
        self._process.kill()
        self._process.wait(STOP_TIMEOUT_S)

    def restart(self) -> None:
        assert self.stop() == 0
        self.start()

    def events(self, name: str) -> list[dict[str, Any]]:
        return [entry for entry in self.logs if entry.get("event") == name]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("data"))
    process.start()
    yield process
    assert process.stop() == 0
    assert process.events("stopped"), "the server did not log a clean shutdown"
    assert not process.events("rpc_crashed"), process.events("rpc_crashed")
    assert not process.events("non_json_output"), process.events("non_json_output")


@pytest.fixture
def client(server: ServerProcess) -> Iterator[ClipmatchClient]:
    with server.client() as sdk:
        yield sdk


@pytest.fixture
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    """A raw channel with the admin token, for requests the SDK never sends (malformed
    streams, bad fingerprints)."""
    with grpc.insecure_channel(server.target) as raw:
        yield with_token(raw, server.admin_token)
