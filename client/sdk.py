"""ClipmatchClient: a small Python SDK over the clipmatch.v1 gRPC API that speaks plain dicts.

Files are streamed in CHUNK_BYTES pieces, so any size works without loading it in memory.
Every call carries the client's API token ($CLIPMATCH_TOKEN unless given). Every failure
surfaces as ClipmatchError with the gRPC status name and the server's message.
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

import grpc
import numpy as np
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clipmatch.v1 import clipmatch_pb2 as pb
from clipmatch.v1 import clipmatch_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from fingerprint.audio import BandFrames
    from fingerprint.video import VideoFrames

DEFAULT_SERVER = "127.0.0.1:50051"
CHUNK_BYTES = 256 * 1024
UNARY_TIMEOUT_S = 60.0
"""Deadline for calls that carry no media; uploads have none, as their size is unbounded."""

T = TypeVar("T")


class ClipmatchError(Exception):
    """A call failed; ``code`` is the gRPC status name (e.g. "NOT_FOUND")."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def default_target() -> str:
    """$CLIPMATCH_SERVER, else the address `clipmatch serve` listens on by default."""
    return os.environ.get("CLIPMATCH_SERVER") or DEFAULT_SERVER


class _CallDetails(collections.namedtuple("_CallDetails", (
        "method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")),
                   grpc.ClientCallDetails):
    """A call's details with other metadata (gRPC's own type has no constructor)."""


class BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.StreamUnaryClientInterceptor):
    """Sends ``authorization: Bearer <token>`` with every unary and client-streaming call
    (every clipmatch call; health checks need none, and reflection streams both ways)."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _CallDetails(details.method, details.timeout,
                            [*(details.metadata or ()), self._header], details.credentials,
                            details.wait_for_ready, details.compression)

    def intercept_unary_unary(self, continuation: Callable[..., Any],
                              details: grpc.ClientCallDetails, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation: Callable[..., Any],
                               details: grpc.ClientCallDetails, requests: Iterator[Any]
                               ) -> Any:
        return continuation(self._with_token(details), requests)


def with_token(channel: grpc.Channel, token: str) -> grpc.Channel:
    """``channel``, sending ``token`` with every call."""
    return grpc.intercept_channel(channel, BearerToken(token))


def modality_name(value: int) -> str:
    """MODALITY_AUDIO_VIDEO -> "audio+video", the library's spelling."""
    return pb.Modality.Name(value).removeprefix("MODALITY_").lower().replace("_", "+")


def message_dict(message: Message) -> dict[str, Any]:
    """Every field of a Reference or Match, with modalities spelled as the library does."""
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.name == "modality":
            value = modality_name(value)
        elif field.name == "modalities":
            value = [modality_name(m) for m in value]
        elif field.name == "metadata":
            value = dict(value)
        elif field.name == "detail":  # an audit entry's, a JSON object
            value = json.loads(value or "{}")
        out[field.name] = value
    return out


def _open(path: Path) -> BinaryIO:
    """Open a file to upload, failing before any call if it cannot be read."""
    try:
        return path.open("rb")
    except OSError as exc:
        raise ClipmatchError("INVALID_ARGUMENT", f"cannot read {path}: {exc.strerror}") from None


def _chunked(media: BinaryIO, header: Message, request_type: type[Message], chunk_bytes: int
             ) -> Iterator[Message]:
    """The request stream: the header, then the file in chunks, read lazily."""
    yield request_type(header=header)
    while chunk := media.read(chunk_bytes):
        yield request_type(chunk=chunk)


class ClipmatchClient:
    """Client for a clipmatch server; use as a context manager or call close()."""

    def __init__(self, target: str | None = None, chunk_bytes: int = CHUNK_BYTES, *,
                 token: str | None = None, tls_ca: str | None = None,
                 tls_cert: str | None = None, tls_key: str | None = None) -> None:
        """``token`` (default $CLIPMATCH_TOKEN) is the API token sent with every call.
        ``tls_ca`` (PEM; default $CLIPMATCH_TLS_CA) speaks TLS to a server whose
        certificate that CA signed; ``tls_cert`` and ``tls_key`` (default $CLIPMATCH_TLS_CERT,
        $CLIPMATCH_TLS_KEY) are this client's, for a server that asks for one (mutual TLS)."""
        self.target = target or default_target()
        self.chunk_bytes = chunk_bytes
        token = (token or os.environ.get("CLIPMATCH_TOKEN") or "").strip()
        ca = tls_ca or os.environ.get("CLIPMATCH_TLS_CA")
        cert = tls_cert or os.environ.get("CLIPMATCH_TLS_CERT")
        key = tls_key or os.environ.get("CLIPMATCH_TLS_KEY")
        self._tls = bool(ca or cert or key)
        if self._tls:
            pem = {name: Path(path).read_bytes() if path else None
                   for name, path in (("ca", ca), ("cert", cert), ("key", key))}
            self._channel = grpc.secure_channel(self.target, grpc.ssl_channel_credentials(
                root_certificates=pem["ca"], private_key=pem["key"],
                certificate_chain=pem["cert"]))
        else:
            self._channel = grpc.insecure_channel(self.target)
        calls = with_token(self._channel, token) if token else self._channel
        self._references = pb_grpc.ReferenceServiceStub(calls)
        self._matcher = pb_grpc.MatchServiceStub(calls)
        self._admin = pb_grpc.AdminServiceStub(calls)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def __enter__(self) -> ClipmatchClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, rpc: Callable[..., T], request: Any, timeout: float | None = UNARY_TIMEOUT_S
              ) -> T:
        """Invoke ``rpc``, turning gRPC failures into ClipmatchError with a useful message."""
        try:
            return rpc(request, timeout=timeout)
        except grpc.RpcError as exc:
            code: grpc.StatusCode = exc.code()
            if code == grpc.StatusCode.UNAVAILABLE:
                tls = ("or the TLS handshake failed: check CLIPMATCH_TLS_CA, _CERT and _KEY"
                       if self._tls else "or, if it speaks TLS, set CLIPMATCH_TLS_CA (and for "
                       "mutual TLS CLIPMATCH_TLS_CERT and CLIPMATCH_TLS_KEY)")
                raise ClipmatchError(code.name, (
                    f"cannot reach the clipmatch server at {self.target} ({exc.details()}); "
                    "start one with `clipmatch serve` or `make serve`, or point --server / "
                    f"CLIPMATCH_SERVER at a running one, {tls}")) from None
            raise ClipmatchError(code.name, exc.details() or code.name) from None

    def register(self, path: str | os.PathLike[str], title: str | None = None,
                 external_id: str = "", metadata: Mapping[str, str] | None = None
                 ) -> dict[str, Any]:
        """Register a reference file; the server titles it with the file name if title is None."""
        path = Path(path)
        header = pb.ReferenceHeader(title=title or "", external_id=external_id,
                                    metadata=dict(metadata or {}), filename=path.name)
        with _open(path) as media:
            response = self._call(
                self._references.CreateReference,
                _chunked(media, header, pb.CreateReferenceRequest, self.chunk_bytes),
                timeout=None)
        return message_dict(response.reference)

    def match(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        """Identify a clip: {"matches": [...], "elapsed_ms", "query_duration_s"}."""
        path = Path(path)
        header = pb.MatchClipHeader(filename=path.name)
        with _open(path) as media:
            response = self._call(
                self._matcher.MatchClip,
                _chunked(media, header, pb.MatchClipRequest, self.chunk_bytes), timeout=None)
        return _match_result(response)

    def match_fingerprint(self, audio: BandFrames | None = None,
                          video: VideoFrames | None = None) -> dict[str, Any]:
        """Identify a clip from fingerprints computed locally (``fingerprint_media`` in
        index.catalog, or fingerprint.audio / fingerprint.video): either or both."""
        request = pb.MatchFingerprintRequest()
        if audio is not None:
            values = np.ascontiguousarray(audio.values, dtype="<f2")
            request.audio.CopyFrom(pb.AudioFingerprint(
                format=audio.format, frame_rate_hz=audio.frame_rate_hz,
                num_bands=values.shape[1], values=values.tobytes()))
        if video is not None:
            height, width = video.pixels.shape[1:]
            request.video.CopyFrom(pb.VideoFingerprint(
                format=video.format, width=width, height=height,
                pixels=np.ascontiguousarray(video.pixels, dtype=np.uint8).tobytes(),
                times=video.times.tolist()))
        response = self._call(self._matcher.MatchFingerprint, request)
        return _match_result(response)

    def get(self, reference_id: str) -> dict[str, Any]:
        response = self._call(self._references.GetReference,
                              pb.GetReferenceRequest(reference_id=reference_id))
        return message_dict(response.reference)

    def list(self, page_size: int = 0, page_token: str = "") -> dict[str, Any]:
        """One page: {"references": [...], "next_page_token", "total_count"}."""
        response = self._call(self._references.ListReferences,
                              pb.ListReferencesRequest(page_size=page_size,
                                                       page_token=page_token))
        return {"references": [message_dict(r) for r in response.references],
                "next_page_token": response.next_page_token,
                "total_count": response.total_count}

    def list_all(self, page_size: int = 0) -> list[dict[str, Any]]:
        """Every reference, following next_page_token to the end."""
        return _every_page(lambda token: self.list(page_size, token), "references")

    def delete(self, reference_id: str) -> None:
        self._call(self._references.DeleteReference,
                   pb.DeleteReferenceRequest(reference_id=reference_id))

    def create_token(self, tenant: str, role: str, label: str = "") -> dict[str, Any]:
        """Issue an API token (admin only): {"token": "cm_...", "info": {...}}. The token is
        shown only in this answer."""
        response = self._call(self._admin.CreateToken,
                              pb.CreateTokenRequest(tenant=tenant, role=role, label=label))
        return {"token": response.token, "info": message_dict(response.info)}

    def list_tokens(self, tenant: str = "") -> list[dict[str, Any]]:
        """Every token (of ``tenant``, if given), never their secrets (admin only)."""
        response = self._call(self._admin.ListTokens, pb.ListTokensRequest(tenant=tenant))
        return [message_dict(token) for token in response.tokens]

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        """Revoke a token for good (admin only); returns its record."""
        response = self._call(self._admin.RevokeToken, pb.RevokeTokenRequest(token_id=token_id))
        return message_dict(response.token)

    def audit(self, tenant: str = "", action: str = "", since: float = 0.0, until: float = 0.0,
              page_size: int = 0, page_token: str = "") -> dict[str, Any]:
        """One page of the audit log, oldest first (admin only): {"entries": [...],
        "next_page_token"}. Empty or 0 filters match everything; since <= at < until."""
        response = self._call(self._admin.QueryAudit, pb.QueryAuditRequest(
            tenant=tenant, action=action, since=since, until=until, page_size=page_size,
            page_token=page_token))
        return {"entries": [message_dict(e) for e in response.entries],
                "next_page_token": response.next_page_token}

    def audit_all(self, tenant: str = "", action: str = "", since: float = 0.0,
                  until: float = 0.0) -> list[dict[str, Any]]:
        """Every audit entry the filters match, following next_page_token to the end."""
        return _every_page(lambda token: self.audit(tenant, action, since, until,
                                                    page_token=token), "entries")

    def health(self, service: str = "") -> str:
        """Serving status of ``service`` ("" = the whole server), e.g. "SERVING"."""
        response = self._call(self._health.Check, health_pb2.HealthCheckRequest(service=service))
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def _every_page(fetch: Callable[[str], dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """The ``key`` items of every page ``fetch(page_token)`` returns, to the last."""
    items: list[dict[str, Any]] = []
    token = ""
    while True:
        page = fetch(token)
        items.extend(page[key])
        token = page["next_page_token"]
        if not token:
            return items


def _match_result(response: pb.MatchClipResponse | pb.MatchFingerprintResponse
                  ) -> dict[str, Any]:
    return {"matches": [message_dict(m) for m in response.matches],
            "elapsed_ms": response.elapsed_ms,
            "query_duration_s": response.query_duration_s}
