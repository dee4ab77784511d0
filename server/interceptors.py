"""The one interceptor: authenticates every call and maps domain errors to status codes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from server.auth import Authenticator, current_principal, required_scope
from server.errors import (
    AbortedError,
    AlreadyExistsError,
    DomainError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
    UnavailableError,
)

log = logging.getLogger("server.rpc")

# The error table (ARCHITECTURE.md, Errors). Order matters only for subclasses.
ERROR_CODES: tuple[tuple[type[DomainError], grpc.StatusCode], ...] = (
    (InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (AlreadyExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (FailedPreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (AbortedError, grpc.StatusCode.ABORTED),
    (UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
)

# Failures of the database or the network below it: the client may retry.
_UNAVAILABLE_ERRORS = (OperationalError, InterfaceError, PoolTimeoutError, OSError)

# A status message travels in the trailers, percent-encoded (up to 12 bytes a character),
# and a client drops trailers past 8-16 KiB as RESOURCE_EXHAUSTED. A message quoting a
# long value is cut after this many characters: they hold the field and the reason.
MESSAGE_CHARS = 300


def bounded(message: str) -> str:
    """A client-facing message of at most MESSAGE_CHARS characters, then "…" and the length
    of the whole when it was longer."""
    if len(message) <= MESSAGE_CHARS:
        return message
    return f"{message[:MESSAGE_CHARS]}… ({len(message)} characters)"


def status_of(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and client-facing message of an exception."""
    if isinstance(error, DomainError):
        for kind, code in ERROR_CODES:
            if isinstance(error, kind):
                return code, bounded(error.message)
    if isinstance(error, NotImplementedError):
        # The generated servicer bases raise it for services that are not built yet.
        return grpc.StatusCode.UNIMPLEMENTED, "not implemented yet"
    if isinstance(error, IntegrityError):
        # A uniqueness race lost to a concurrent request: the checks passed before it.
        return grpc.StatusCode.ABORTED, "a concurrent change conflicted with this one; retry"
    if isinstance(error, _UNAVAILABLE_ERRORS) or (
        isinstance(error, DBAPIError) and error.connection_invalidated
    ):
        return grpc.StatusCode.UNAVAILABLE, "the database is unavailable; retry later"
    return grpc.StatusCode.INTERNAL, "internal error"


def _metadata_value(context: grpc.aio.ServicerContext[Any, Any], key: str) -> str | None:
    for item_key, value in context.invocation_metadata() or ():
        if item_key == key:
            return value if isinstance(value, str) else value.decode()
    return None


class ServiceInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Authentication, scope check, principal binding and the error table, for all RPCs."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._auth = authenticator

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        scope = required_scope(method)
        if handler is None or scope is None:
            return handler
        return _wrap(handler, method, scope, self._auth)


async def _enter(
    context: grpc.aio.ServicerContext[Any, Any], scope: str, auth: Authenticator
) -> None:
    principal = await auth.authenticate(_metadata_value(context, "authorization"))
    principal.require(scope)
    current_principal.set(principal)


async def _fail(context: grpc.aio.ServicerContext[Any, Any], method: str, error: Exception) -> Any:
    code, message = status_of(error)
    if code is grpc.StatusCode.INTERNAL:
        log.exception("unhandled error in %s", method, exc_info=error)
    elif code is grpc.StatusCode.UNAVAILABLE:
        log.warning("dependency unavailable in %s: %r", method, error)
    await context.abort(code, message)


def _wrap(handler: Any, method: str, scope: str, auth: Authenticator) -> Any:
    # grpc's stubs type handlers for the sync server; the aio server calls coroutines.
    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                await _enter(context, scope, auth)
                return await inner_uu(request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as error:
                return await _fail(context, method, error)

        return grpc.unary_unary_rpc_method_handler(unary_unary, **kwargs)
    if handler.stream_unary is not None:
        inner_su = handler.stream_unary

        async def stream_unary(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
        ) -> Any:
            try:
                await _enter(context, scope, auth)
                return await inner_su(requests, context)
            except grpc.aio.AbortError:
                raise
            except Exception as error:
                return await _fail(context, method, error)

        return grpc.stream_unary_rpc_method_handler(stream_unary, **kwargs)
    inner_stream = handler.unary_stream or handler.stream_stream

    async def streaming(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            await _enter(context, scope, auth)
            async for response in inner_stream(request, context):
                yield response
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await _fail(context, method, error)

    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(streaming, **kwargs)
    return grpc.stream_stream_rpc_method_handler(streaming, **kwargs)
