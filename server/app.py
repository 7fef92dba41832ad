"""Build and run the gRPC server: the clipmatch services, health checking and reflection."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
import sqlite3
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
from server.access import ADMIN_TOKEN_FILE, Access, Guard, LockedOut, ensure_admin_token, token_id
from server.options import (
    DEFAULT_AUTH,
    DEFAULT_LIMITS,
    DEFAULT_LISTEN,
    AuthOptions,
    Limits,
    TlsFiles,
)
from server.servicers import AdminServicer, MatchServicer, ReferenceServicer

SERVICE_NAMES = tuple(service.full_name for service in pb.DESCRIPTOR.services_by_name.values())
MESSAGE_LIMIT_BYTES = 8 * 1024 * 1024
"""Headroom over gRPC's 4 MiB default for big fingerprints and list pages; media is streamed."""
DEFAULT_WORKERS = options.DEFAULT_RPC_THREADS
GRACE_S = 10.0
"""How long in-flight calls may run on after SIGTERM before they are cancelled."""
UPLOADS_DIR = "tmp"
"""Sub-folder of the data dir where uploads in flight are spooled."""


def build_server(catalog: Catalog, listen: str = DEFAULT_LISTEN,
                 max_workers: int = DEFAULT_WORKERS, *, guard: Guard,
                 upload_dir: Path | None = None,
                 health_servicer: health.HealthServicer | None = None,
                 limits: Limits = DEFAULT_LIMITS, tls: TlsFiles | None = None
                 ) -> tuple[grpc.Server, int]:
    """A server (not yet started) bound to ``listen``, and the port it got (``:0`` picks one).

    ``guard`` admits each call (and holds the audit log); ``upload_dir`` is where uploads
    are spooled (the system temp dir if None); pass a ``health_servicer`` to be able to flip
    it to NOT_SERVING on shutdown.
    """
    server = grpc.server(
        ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rpc"),
        options=[("grpc.max_receive_message_length", MESSAGE_LIMIT_BYTES),
                 ("grpc.max_send_message_length", MESSAGE_LIMIT_BYTES),
                 # Without this a second server on the same port would silently share it.
                 ("grpc.so_reuseport", 0)],
    )
    spool = upload_dir or Path(tempfile.gettempdir())
    pb_grpc.add_ReferenceServiceServicer_to_server(
        ReferenceServicer(guard, catalog, spool, limits), server)
    pb_grpc.add_MatchServiceServicer_to_server(MatchServicer(guard, catalog, spool, limits),
                                               server)
    pb_grpc.add_AdminServiceServicer_to_server(AdminServicer(guard), server)

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
          tls=TlsFiles.from_args(args), auth=AuthOptions.from_args(args))


def _is_loopback(listen: str) -> bool:
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _show_admin_token(token: str, data_dir: Path) -> None:
    """Tell the operator the admin token a first start issued: a log event without the
    secret, and the token itself on stdout, once (the JSON logs on stderr are shipped and
    kept; they never carry a secret)."""
    path = data_dir / ADMIN_TOKEN_FILE
    logs.event("admin_token_created", token_id=token_id(token), path=str(path))
    print(f"clipmatch: the admin API token of this data directory (shown only this once; kept "
          f"in {path}, mode 0600):\n\n    {token}\n\nGive it to the CLI as CLIPMATCH_TOKEN, "
          "e.g. to issue a crawler's token: clipmatch token create --tenant T --role crawler",
          flush=True)


def serve(data_dir: str | Path, listen: str = DEFAULT_LISTEN,
          max_workers: int = DEFAULT_WORKERS, *, ingest_processes: int = 0,
          limits: Limits = DEFAULT_LIMITS, tls: TlsFiles | None = None,
          auth: AuthOptions = DEFAULT_AUTH) -> None:
    """Serve the catalogue in ``data_dir`` until SIGTERM or SIGINT, then shut down cleanly:
    health goes NOT_SERVING, in-flight calls get GRACE_S seconds, the catalogue is closed.
    Registrations are fingerprinted in ``ingest_processes`` processes (0: in the RPC
    threads); ``limits`` bound what one request may ask; ``tls`` secures the port; ``auth``
    says whether calls need API tokens (without, only on a loopback address) and how fast
    each token may call. A first start with auth issues an admin token."""
    logs.configure()
    data_dir = Path(data_dir)
    if not auth.enabled:
        if not _is_loopback(listen):
            logs.event("cannot_listen", logging.ERROR, listen=listen, error=(
                "--no-auth lets every caller act as admin, so it is refused unless --listen "
                "is a loopback address (127.0.0.1, ::1, localhost); remove --no-auth to "
                "serve other hosts with API tokens"))
            raise SystemExit(1)
        logs.event("auth_disabled", logging.WARNING, warning=(
            "--no-auth: NO ACCESS CONTROL, every caller acts as admin with no token; for "
            "development on this machine only"))
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
        try:
            access = Access(data_dir)
        except (sqlite3.Error, OSError) as exc:
            logs.event("cannot_open_access", logging.ERROR, exc_info=True,
                       data_dir=str(data_dir))
            raise SystemExit(1) from exc
        try:
            _serve(catalog, access, data_dir, listen, max_workers, limits, tls, auth, stop)
        finally:
            access.close()
    finally:
        catalog.close()
    logs.event("stopped")


def _serve(catalog: Catalog, access: Access, data_dir: Path, listen: str, max_workers: int,
           limits: Limits, tls: TlsFiles | None, auth: AuthOptions, stop: threading.Event
           ) -> None:
    """``serve`` once the catalogue and the access store are open."""
    if auth.enabled:
        try:
            issued = ensure_admin_token(access, data_dir)
        except LockedOut as exc:
            logs.event("no_admin_token", logging.WARNING, error=str(exc))
        else:
            if issued:
                _show_admin_token(issued, data_dir)
    health_servicer = health.HealthServicer()
    try:
        server, port = build_server(catalog, listen, max_workers,
                                    guard=Guard(access, data_dir, auth),
                                    upload_dir=_spool_dir(data_dir),
                                    health_servicer=health_servicer, limits=limits, tls=tls)
    except OSError as exc:
        logs.event("cannot_listen", logging.ERROR, listen=listen, error=str(exc))
        raise SystemExit(1) from exc
    server.start()
    host = listen.rsplit(":", 1)[0]
    logs.event("serving", listen=f"{host}:{port}", port=port, data_dir=str(data_dir),
               services=list(SERVICE_NAMES), limits=asdict(limits),
               tls="off" if tls is None else "mutual" if tls.client_ca else "on",
               auth=asdict(auth))
    stop.wait()
    logs.event("stopping", grace_s=GRACE_S)
    health_servicer.enter_graceful_shutdown()
    server.stop(GRACE_S).wait()
