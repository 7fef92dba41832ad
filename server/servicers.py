"""ReferenceService, MatchService and AdminService: stream uploads to disk, call the Catalog,
record the audit, map errors.

Every RPC goes through ``_rpc``, which admits the caller first (their token, their role, their
rate: ``server.access.Guard``; a streamed upload is refused before any of it is read), turns
library exceptions into gRPC status codes with the library's human message, logs one JSON
line per call with who made it, and turns anything unexpected into INTERNAL so that a bug in
one request never takes the server down.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import grpc

from clipmatch.v1 import clipmatch_pb2 as pb
from clipmatch.v1 import clipmatch_pb2_grpc as pb_grpc
from fingerprint.decode import MediaError, MediaTooLong
from index.catalog import Catalog, DuplicateError, Match, NotFoundError, fingerprint_media
from server import convert, logs
from server.access import (
    ADMIN,
    CRAWLER,
    RIGHTS_HOLDER,
    Guard,
    LockedOut,
    PermissionDenied,
    Principal,
    RateLimited,
    Unauthenticated,
)
from server.convert import InvalidRequest
from server.options import DEFAULT_LIMITS, MB, Limits

MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100

MANAGE = (ADMIN, RIGHTS_HOLDER)
"""Who may register, look up, list and delete references (a rights holder its own)."""
MATCH = (ADMIN, RIGHTS_HOLDER, CRAWLER)
"""Who may match clips (against their own tenant's references; an admin against all)."""

Response = TypeVar("Response", pb.MatchClipResponse, pb.MatchFingerprintResponse)
Handler = Callable[[Any, Any, grpc.ServicerContext, dict[str, Any], Principal], Any]
Method = Callable[[Any, Any, grpc.ServicerContext], Any]


def _rpc(*roles: str) -> Callable[[Handler], Method]:
    """Make a handler a gRPC method that callers with one of ``roles`` may call. The handler
    takes two extra arguments: a ``fields`` dict, added to its log line, and the caller
    (``Principal``). The method admits the caller, maps errors to status codes and logs one
    structured line per call."""

    def wrap(handler: Handler) -> Method:
        @functools.wraps(handler)
        def method(self: _Service, request: Any, context: grpc.ServicerContext) -> Any:
            fields: dict[str, Any] = {}
            started = time.perf_counter()
            code, message = grpc.StatusCode.OK, ""
            caller: Principal | None = None
            try:
                caller = self.guard.admit(context.invocation_metadata(), handler.__name__,
                                          roles)
                return handler(self, request, context, fields, caller)
            except Unauthenticated as exc:
                code, message = grpc.StatusCode.UNAUTHENTICATED, str(exc)
            except PermissionDenied as exc:
                code, message = grpc.StatusCode.PERMISSION_DENIED, str(exc)
            except LockedOut as exc:
                code, message = grpc.StatusCode.FAILED_PRECONDITION, str(exc)
            except InvalidRequest as exc:
                code, message = grpc.StatusCode.INVALID_ARGUMENT, str(exc)
            except (LimitExceeded, MediaTooLong, RateLimited) as exc:
                code, message = grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
            except DuplicateError as exc:
                code, message = grpc.StatusCode.ALREADY_EXISTS, _duplicate_message(exc)
                fields["reference_id"] = exc.reference_id
            except MediaError as exc:
                code, message = grpc.StatusCode.INVALID_ARGUMENT, str(exc)
            except NotFoundError as exc:
                code, message = grpc.StatusCode.NOT_FOUND, str(exc)
            except (grpc.RpcError, ClientCancelled):  # the client cancelled or went away
                code, message = grpc.StatusCode.CANCELLED, "the client cancelled the call"
            except Exception as exc:
                code = grpc.StatusCode.INTERNAL
                message = f"internal error ({type(exc).__name__}); the server log has the details"
                logs.event("rpc_crashed", logging.ERROR, exc_info=True, method=handler.__name__)
            finally:
                who = {} if caller is None else {"tenant": caller.tenant, "role": caller.role,
                                                 "token_id": caller.token_id}
                logs.event("rpc", method=handler.__name__, status=code.name,
                           elapsed_ms=round(_elapsed_ms(started), 1), peer=context.peer(),
                           **who, **fields, **({"message": message} if message else {}))
            context.abort(code, message)

        return method

    return wrap


def _duplicate_message(exc: DuplicateError) -> str:
    message = str(exc)
    if exc.reference_id in message:
        return message
    return f"{message} (existing reference_id {exc.reference_id})"


class ClientCancelled(Exception):
    """The client cancelled the call (or its deadline passed) before the answer."""


class LimitExceeded(Exception):
    """The request asks more than the server's ``Limits`` allow; the message names the
    limit and what to do."""


def _still_wanted(context: grpc.ServicerContext) -> None:
    """Stop before more work if the caller has cancelled or its deadline has passed."""
    if not context.is_active():
        raise ClientCancelled()


class ChunkedRequest(Protocol):
    """CreateReferenceRequest and MatchClipRequest: a header, then chunks."""

    header: Any
    chunk: bytes

    def WhichOneof(self, group: str) -> str | None: ...


@dataclass(frozen=True)
class Upload:
    header: Any
    path: Path
    started: float
    """time.perf_counter() when the first message arrived: elapsed_ms counts from here."""


def _basename(filename: str) -> str:
    """The client's file name without any directory, whichever separator it used."""
    return filename.replace("\\", "/").rsplit("/", 1)[-1].strip()


def _suffix(filename: str) -> str:
    """The client's file extension, if it looks like one: it helps FFmpeg pick a demuxer."""
    suffix = Path(_basename(filename)).suffix
    return suffix if re.fullmatch(r"\.[A-Za-z0-9]{1,8}", suffix) else ""


@contextmanager
def received_upload(requests: Iterator[ChunkedRequest], upload_dir: Path,
                    fields: dict[str, Any], max_bytes: int, limit_flag: str
                    ) -> Iterator[Upload]:
    """Write a header-then-chunks stream to a temporary file, one chunk in memory at a time,
    and delete the file when the block ends. Notes the file name and size in ``fields``.
    Stops reading once the upload passes ``max_bytes`` (the server's ``limit_flag``)."""
    first = next(requests, None)
    started = time.perf_counter()
    if first is None or first.WhichOneof("payload") != "header":
        raise InvalidRequest(
            "the stream must start with a header message, then send the media bytes in "
            "chunk messages")
    fields["filename"] = first.header.filename
    fd, name = tempfile.mkstemp(prefix="upload-", suffix=_suffix(first.header.filename),
                                dir=upload_dir)
    path = Path(name)
    try:
        size = 0
        with os.fdopen(fd, "wb") as out:
            for request in requests:
                if request.WhichOneof("payload") != "chunk":
                    raise InvalidRequest("after the header, every message must be a chunk")
                size += len(request.chunk)
                fields["bytes"] = size
                if size > max_bytes:
                    raise LimitExceeded(
                        f"the upload is larger than {max_bytes / MB:g} MB, the most this "
                        f"server accepts ({limit_flag}): send a shorter or smaller file")
                out.write(request.chunk)
        if size == 0:
            raise MediaError("the upload is empty (0 bytes): send the media file's bytes in "
                             "chunk messages after the header")
        yield Upload(first.header, path, started)
    finally:
        path.unlink(missing_ok=True)


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


class _Service:
    """What every servicer's calls need: the guard that admits them, and the access store
    they record the audit in."""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard
        self.access = guard.access


class _CatalogService(_Service):
    """A servicer over the catalogue, spooling uploads to ``upload_dir``."""

    def __init__(self, guard: Guard, catalog: Catalog, upload_dir: Path,
                 limits: Limits = DEFAULT_LIMITS) -> None:
        super().__init__(guard)
        self.catalog = catalog
        self.upload_dir = upload_dir
        self.limits = limits


class ReferenceServicer(_CatalogService, pb_grpc.ReferenceServiceServicer):
    """Register, look up, page through and delete reference media: a rights holder its own
    tenant's, an admin every tenant's."""

    @_rpc(*MANAGE)
    def CreateReference(self, requests: Iterator[pb.CreateReferenceRequest],
                        context: grpc.ServicerContext, fields: dict[str, Any],
                        caller: Principal) -> pb.CreateReferenceResponse:
        with received_upload(requests, self.upload_dir, fields,
                             self.limits.max_reference_bytes, "--max-reference-mb") as upload:
            _still_wanted(context)
            header: pb.ReferenceHeader = upload.header
            ref = self.catalog.register(
                upload.path, title=_title(header), external_id=header.external_id,
                metadata=dict(header.metadata), tenant=caller.tenant,
            )
        fields.update(reference_id=ref.reference_id, duration_s=round(ref.duration_s, 3))
        if not context.is_active():
            # gRPC can end the request stream of a cancelled call as if it were complete, so
            # the upload may be truncated; the caller never learns this id either: undo.
            self.catalog.delete(ref.reference_id)
            raise ClientCancelled()
        self.access.record("register", caller, tenant=ref.tenant, reference_id=ref.reference_id,
                           detail={"title": ref.title, "duration_s": round(ref.duration_s, 3),
                                   "content_sha256": ref.content_sha256})
        return pb.CreateReferenceResponse(reference=convert.reference_message(ref))

    @_rpc(*MANAGE)
    def GetReference(self, request: pb.GetReferenceRequest, context: grpc.ServicerContext,
                     fields: dict[str, Any], caller: Principal) -> pb.GetReferenceResponse:
        fields["reference_id"] = _required_id(request.reference_id)
        ref = self.catalog.get(request.reference_id, caller.scope)
        return pb.GetReferenceResponse(reference=convert.reference_message(ref))

    @_rpc(*MANAGE)
    def ListReferences(self, request: pb.ListReferencesRequest, context: grpc.ServicerContext,
                       fields: dict[str, Any], caller: Principal) -> pb.ListReferencesResponse:
        try:
            refs, next_token, total = self.catalog.list(
                page_size=_page_size(request.page_size), page_token=request.page_token,
                tenant=caller.scope)
        except ValueError as exc:  # the library rejects tokens it did not issue
            raise InvalidRequest(str(exc)) from exc
        fields.update(returned=len(refs), total_count=total)
        return pb.ListReferencesResponse(
            references=[convert.reference_message(ref) for ref in refs],
            next_page_token=next_token, total_count=total)

    @_rpc(*MANAGE)
    def DeleteReference(self, request: pb.DeleteReferenceRequest,
                        context: grpc.ServicerContext, fields: dict[str, Any],
                        caller: Principal) -> pb.DeleteReferenceResponse:
        fields["reference_id"] = _required_id(request.reference_id)
        ref = self.catalog.delete(request.reference_id, caller.scope)
        self.access.record("delete", caller, tenant=ref.tenant, reference_id=ref.reference_id,
                           detail={"title": ref.title})
        return pb.DeleteReferenceResponse()


def _page_size(page_size: int) -> int:
    """A request's page size, 0 meaning the default; InvalidRequest past the maximum."""
    if not 0 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidRequest(f"page_size must be between 0 and {MAX_PAGE_SIZE} (0 means "
                             f"{DEFAULT_PAGE_SIZE}), got {page_size}")
    return page_size or DEFAULT_PAGE_SIZE


def _title(header: pb.ReferenceHeader) -> str:
    """The header's title, else the uploaded file's name (without any directory)."""
    title = header.title.strip() or _basename(header.filename)
    if not title:
        raise InvalidRequest("the header needs a title or a filename to use as the title")
    return title


def _required_id(reference_id: str, name: str = "reference_id") -> str:
    if not reference_id:
        raise InvalidRequest(f"{name} is required")
    return reference_id


class MatchServicer(_CatalogService, pb_grpc.MatchServiceServicer):
    """Identify clips (as media or as client-computed fingerprints) against the catalogue:
    the caller's tenant's references, or every tenant's for an admin."""

    @_rpc(*MATCH)
    def MatchClip(self, requests: Iterator[pb.MatchClipRequest], context: grpc.ServicerContext,
                  fields: dict[str, Any], caller: Principal) -> pb.MatchClipResponse:
        with received_upload(requests, self.upload_dir, fields, self.limits.max_clip_bytes,
                             "--max-clip-mb") as upload:
            _still_wanted(context)
            # Fingerprinted here rather than in match_media so the clip's duration comes along.
            query = fingerprint_media(upload.path, self.limits.max_clip_s)
            _still_wanted(context)
            matches = self.catalog.match(query, caller.scope)
        return self._answer(pb.MatchClipResponse, matches, upload.started, query.duration_s,
                            fields, caller)

    @_rpc(*MATCH)
    def MatchFingerprint(self, request: pb.MatchFingerprintRequest,
                         context: grpc.ServicerContext, fields: dict[str, Any],
                         caller: Principal) -> pb.MatchFingerprintResponse:
        started = time.perf_counter()
        query = convert.query(request)
        if query.duration_s > self.limits.max_clip_s:
            raise LimitExceeded(
                f"the fingerprinted clip lasts {query.duration_s:g} s, longer than "
                f"{self.limits.max_clip_s:g} s, the longest this server matches "
                "(--max-clip-seconds): send it in parts")
        try:
            matches = self.catalog.match(query, caller.scope)
        except ValueError as exc:  # e.g. a band count or frame rate this index was not built for
            raise InvalidRequest(str(exc)) from exc
        return self._answer(pb.MatchFingerprintResponse, matches, started, query.duration_s,
                            fields, caller)

    def _answer(self, response_type: type[Response], matches: list[Match], started: float,
                duration_s: float, fields: dict[str, Any], caller: Principal) -> Response:
        """A match response, with ``elapsed_ms`` counted from ``started``; notes it for the
        log and the audit (in the background: a match does not wait for a commit)."""
        elapsed_ms = _elapsed_ms(started)
        fields.update(matches=len(matches), query_duration_s=round(duration_s, 3),
                      reference_ids=[m.reference_id for m in matches])
        self.access.record(
            "match", caller, tenant=caller.tenant, durable=False,
            detail={"matches": [{"reference_id": m.reference_id, "score": round(m.score, 3)}
                                for m in matches],
                    "query_duration_s": round(duration_s, 3), "elapsed_ms": round(elapsed_ms, 1)})
        return response_type(matches=[convert.match_message(m) for m in matches],
                             elapsed_ms=elapsed_ms, query_duration_s=duration_s)


class AdminServicer(_Service, pb_grpc.AdminServiceServicer):
    """Issue, list and revoke API tokens; read the audit log. Admin tokens only."""

    @_rpc(ADMIN)
    def CreateToken(self, request: pb.CreateTokenRequest, context: grpc.ServicerContext,
                    fields: dict[str, Any], caller: Principal) -> pb.CreateTokenResponse:
        try:
            token, info = self.access.create_token(request.tenant, request.role, request.label)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from exc
        fields.update(created_token_id=info.token_id, created_role=info.role,
                      created_tenant=info.tenant)
        self.access.record("token_create", caller, tenant=info.tenant,
                           detail={"token_id": info.token_id, "role": info.role,
                                   "label": info.label})
        return pb.CreateTokenResponse(token=token, info=convert.token_message(info))

    @_rpc(ADMIN)
    def ListTokens(self, request: pb.ListTokensRequest, context: grpc.ServicerContext,
                   fields: dict[str, Any], caller: Principal) -> pb.ListTokensResponse:
        tokens = self.access.tokens(request.tenant)
        fields["returned"] = len(tokens)
        return pb.ListTokensResponse(tokens=[convert.token_message(t) for t in tokens])

    @_rpc(ADMIN)
    def RevokeToken(self, request: pb.RevokeTokenRequest, context: grpc.ServicerContext,
                    fields: dict[str, Any], caller: Principal) -> pb.RevokeTokenResponse:
        fields["revoked_token_id"] = _required_id(request.token_id, "token_id")
        info = self.access.revoke(request.token_id)
        self.access.record("token_revoke", caller, tenant=info.tenant,
                           detail={"token_id": info.token_id, "role": info.role})
        return pb.RevokeTokenResponse(token=convert.token_message(info))

    @_rpc(ADMIN)
    def QueryAudit(self, request: pb.QueryAuditRequest, context: grpc.ServicerContext,
                   fields: dict[str, Any], caller: Principal) -> pb.QueryAuditResponse:
        try:
            entries, next_token = self.access.query(
                tenant=request.tenant, action=request.action, since=request.since,
                until=request.until, page_size=_page_size(request.page_size),
                page_token=request.page_token)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from exc
        fields["returned"] = len(entries)
        return pb.QueryAuditResponse(entries=[convert.audit_message(e) for e in entries],
                                     next_page_token=next_token)
