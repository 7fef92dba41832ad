"""Build and run the gRPC server: the two clipmatch services, health checking and reflection."""

from __future__ import annotations

import argparse
import logging
import signal
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from clipmatch.v1 import clipmatch_pb2 as pb
from clipmatch.v1 import clipmatch_pb2_grpc as pb_grpc
from index.catalog import Catalog
from server import logs, options
from server.options import DEFAULT_LIMITS, DEFAULT_LISTEN, Limits, TlsFiles
from server.servicers import MatchServicer, ReferenceServicer

SERVICE_NAMES = tuple(service.full_name for service in pb.DESCRIPTOR.services_by_name.values())
MESSAGE_LIMIT_BYTES = 8 * 1024 * 1024
"""Headroom over gRPC's 4 MiB default for big fingerprints and list pages; media is streamed."""
DEFAULT_WORKERS = options.DEFAULT_RPC_THREADS
GRACE_S = 10.0
"""How long in-flight calls may run on after SIGTERM before they are cancelled."""
UPLOADS_DIR = "tmp"
"""Sub-folder of the data dir where uploads in flight are spooled."""


def build_server(catalog: Catalog, listen: str = DEFAULT_LISTEN,
                 max_workers: int = DEFAULT_WORKERS, *, upload_dir: Path | None = None,
                 health_servicer: health.HealthServicer | None = None,
                 limits: Limits = DEFAULT_LIMITS, tls: TlsFiles | None = None
                 ) -> tuple[grpc.Server, int]:
    """A server (not yet started) bound to ``listen``, and the port it got (``:0`` picks one).

    ``upload_dir`` is where uploads are spooled (the system temp dir if None); pass a
    ``health_servicer`` to be able to flip it to NOT_SERVING on shutdown.
    """
    server = grpc.server(
        ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rpc"),
        options=[("grpc.max_receive_message_length", MESSAGE_LIMIT_BYTES),
                 ("grpc.max_send_message_length", MESSAGE_LIMIT_BYTES),
                 # Without this a second server on the same port would silently share it.
                 ("grpc.so_reuseport", 0)],
    )
    spool = upload_dir or Path(tempfile.gettempdir())
    pb_grpc.add_ReferenceServiceServicer_to_server(ReferenceServicer(catalog, spool, limits),
                                                   server)
    pb_grpc.add_MatchServiceServicer_to_server(MatchServicer(catalog, spool, limits), server)

    health_servicer = health_servicer or health.HealthServicer()
    for name in ("", *SERVICE_NAMES):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)

    try:
        port = (server.add_insecure_port(listen) if tls is None
                else server.add_secure_port(listen, _credentials(tls)))
    except RuntimeError as exc:
        raise OSError(f"cannot listen on {listen}: the address is in use or not valid here"
                      ) from exc
    return server, port


def _credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    def read(path: str, what: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise OSError(f"cannot read the TLS {what} {path}: {exc.strerror}") from None

    client_ca = read(tls.client_ca, "client CA") if tls.client_ca else None
    return grpc.ssl_server_credentials(
        [(read(tls.key, "key"), read(tls.cert, "certificate"))], root_certificates=client_ca,
        require_client_auth=client_ca is not None)


def _spool_dir(data_dir: Path) -> Path:
    """The uploads folder, emptied of files a killed server left behind."""
    spool = data_dir / UPLOADS_DIR
    spool.mkdir(parents=True, exist_ok=True)
    for stale in spool.glob("upload-*"):
        stale.unlink(missing_ok=True)
    return spool


def serve_options(args: argparse.Namespace) -> None:
    """``serve`` as ``options.add_arguments`` parsed it (``python -m server``, ``clipmatch
    serve``)."""
    serve(args.data_dir, args.listen, args.rpc_threads,
          ingest_processes=args.ingest_processes, limits=Limits.from_args(args),
          tls=TlsFiles.from_args(args))


def serve(data_dir: str | Path, listen: str = DEFAULT_LISTEN,
          max_workers: int = DEFAULT_WORKERS, *, ingest_processes: int = 0,
          limits: Limits = DEFAULT_LIMITS, tls: TlsFiles | None = None) -> None:
    """Serve the catalogue in ``data_dir`` until SIGTERM or SIGINT, then shut down cleanly:
    health goes NOT_SERVING, in-flight calls get GRACE_S seconds, the catalogue is closed.
    Registrations are fingerprinted in ``ingest_processes`` processes (0: in the RPC
    threads); ``limits`` bound what one request may ask; ``tls`` secures the port."""
    logs.configure()
    data_dir = Path(data_dir)
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        logs.event("signal", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    try:
        catalog = Catalog(data_dir, ingest_processes=ingest_processes)
    except Exception as exc:  # report it as a log line like everything else, then exit
        logs.event("cannot_open_catalog", logging.ERROR, exc_info=True, data_dir=str(data_dir))
        raise SystemExit(1) from exc
    try:
        health_servicer = health.HealthServicer()
        try:
            server, port = build_server(catalog, listen, max_workers,
                                        upload_dir=_spool_dir(data_dir),
                                        health_servicer=health_servicer, limits=limits,
                                        tls=tls)
        except OSError as exc:
            logs.event("cannot_listen", logging.ERROR, listen=listen, error=str(exc))
            raise SystemExit(1) from exc
        server.start()
        host = listen.rsplit(":", 1)[0]
        logs.event("serving", listen=f"{host}:{port}", port=port, data_dir=str(data_dir),
                   services=list(SERVICE_NAMES), limits=asdict(limits),
                   tls="off" if tls is None else "mutual" if tls.client_ca else "on")
        stop.wait()
        logs.event("stopping", grace_s=GRACE_S)
        health_servicer.enter_graceful_shutdown()
        server.stop(GRACE_S).wait()
    finally:
        catalog.close()
    logs.event("stopped")
