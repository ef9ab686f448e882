"""Seed 000's six grpc.aio interceptors, as the seed writes them: the "before" peer baseline.

Kept here, in the bench package, so `grpcstack bench seed000|stacks` compare against the design
the stack replaces, not against a straw man. Written from seed 000 sections 3.3-3.4: Metrics,
ErrorHandling and RateLimiter follow the seed's code; Auth (user_id check), Metadata
(correlation_id, generated when absent) and Logging (a structured line per call) follow the
seed's one-line descriptions, since the seed shows only their names.

Fixed only where the seed's code does not run, nothing else:

* ``context`` is undefined in ``intercept_service`` (an interceptor sees no call context): the
  RateLimiter and Auth refusals return a handler that aborts with the seed's status instead;
* ErrorHandling, as written, catches only errors raised while *looking up* the handler, never the
  handler's own, so it wraps the handler's behaviour to map exceptions as the seed intends;
* ``get_redis_client()`` (from the seed's own package) is one shared redis-py asyncio client.
"""

from __future__ import annotations

import contextvars
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

logger = logging.getLogger("seed.grpc")
correlation_id: contextvars.ContextVar[str] = contextvars.ContextVar("correlation_id", default="")

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


def _aborting(code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    async def abort(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    return grpc.unary_unary_rpc_method_handler(abort)


def _wrap_unary(
    handler: grpc.RpcMethodHandler | None,
    wrapper: Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]],
) -> grpc.RpcMethodHandler | None:
    if handler is None or handler.unary_unary is None:
        return handler
    return handler._replace(unary_unary=wrapper(handler.unary_unary))


_redis: Any = None


async def get_redis_client(url: str) -> Any:
    global _redis
    if _redis is None:
        from redis.asyncio import Redis

        _redis = Redis.from_url(url)
    return _redis


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Request count (OK/ERROR) and latency, as seed 000 section 3.4 writes it."""

    def __init__(self, service_name: str) -> None:
        from prometheus_client import Counter, Histogram

        self.service_name = service_name
        self.request_count = Counter(
            "grpc_requests_total", "Total gRPC requests", ["service", "method", "status"]
        )
        self.request_latency = Histogram(
            "grpc_request_duration_seconds", "gRPC request latency", ["service", "method"]
        )

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        start = time.time()
        try:
            handler = await continuation(handler_call_details)
            self.request_count.labels(service=self.service_name, method=method, status="OK").inc()
            return handler
        except Exception:
            self.request_count.labels(
                service=self.service_name, method=method, status="ERROR"
            ).inc()
            raise
        finally:
            elapsed = time.time() - start
            self.request_latency.labels(service=self.service_name, method=method).observe(elapsed)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """user_id check: a call without ``user-id`` metadata is UNAUTHENTICATED."""

    def __init__(self, require_auth: bool = True, exempt_methods: list[str] | None = None) -> None:
        self.require_auth = require_auth
        self.exempt_methods = set(exempt_methods or [])

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        if self.require_auth and handler_call_details.method not in self.exempt_methods:
            metadata = dict(handler_call_details.invocation_metadata or [])
            if not metadata.get("user-id"):
                return _aborting(grpc.StatusCode.UNAUTHENTICATED, "user-id metadata required")
        return await continuation(handler_call_details)


class RateLimiterInterceptor(grpc.aio.ServerInterceptor):
    """Per-user fixed window in Redis (INCR + EXPIRE per call), as seed 000 section 3.4."""

    def __init__(self, max_requests: int, window_seconds: int, redis_url: str) -> None:
        self.max_requests = max_requests
        self.window_seconds = window_seconds
        self.redis_url = redis_url

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        metadata = dict(handler_call_details.invocation_metadata or [])
        user_id = metadata.get("user-id", "anonymous")
        redis = await get_redis_client(self.redis_url)
        key = f"rate_limit:{user_id}:{int(time.time() / self.window_seconds)}"
        current_count = await redis.incr(key)
        await redis.expire(key, self.window_seconds)
        if current_count > self.max_requests:
            return _aborting(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"Rate limit exceeded: {self.max_requests}/{self.window_seconds}s",
            )
        return await continuation(handler_call_details)


class MetadataInterceptor(grpc.aio.ServerInterceptor):
    """correlation_id from ``x-correlation-id`` or a new one; sent back in initial metadata."""

    def __init__(self, auto_generate: bool = True) -> None:
        self.auto_generate = auto_generate

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        metadata = dict(handler_call_details.invocation_metadata or [])
        cid = metadata.get("x-correlation-id") or (uuid.uuid4().hex if self.auto_generate else "")
        handler = await continuation(handler_call_details)

        def wrapper(behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            async def with_cid(request: Any, context: grpc.aio.ServicerContext) -> Any:
                correlation_id.set(cid)
                await context.send_initial_metadata((("x-correlation-id", cid),))
                return await behavior(request, context)

            return with_cid

        return _wrap_unary(handler, wrapper)


class LoggingInterceptor(grpc.aio.ServerInterceptor):
    """A structured log line per call (method, user, duration)."""

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        metadata = dict(handler_call_details.invocation_metadata or [])
        handler = await continuation(handler_call_details)

        def wrapper(behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            async def logged(request: Any, context: grpc.aio.ServicerContext) -> Any:
                start = time.perf_counter()
                try:
                    return await behavior(request, context)
                finally:
                    logger.info(
                        "gRPC call completed",
                        extra={
                            "method": method,
                            "user_id": metadata.get("user-id", ""),
                            "correlation_id": correlation_id.get(),
                            "duration_ms": (time.perf_counter() - start) * 1000,
                        },
                    )

            return logged

        return _wrap_unary(handler, wrapper)


class ErrorHandlingInterceptor(grpc.aio.ServerInterceptor):
    """Python exceptions to gRPC statuses (ValueError -> INVALID_ARGUMENT ... -> INTERNAL)."""

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)

        def wrapper(behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            async def mapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    return await behavior(request, context)
                except grpc.RpcError:
                    raise
                except ValueError as e:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
                except PermissionError as e:
                    await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(e))
                except FileNotFoundError as e:
                    await context.abort(grpc.StatusCode.NOT_FOUND, str(e))
                except Exception as e:
                    if isinstance(e, grpc.aio.AbortError):
                        raise
                    logger.error("Unhandled exception in gRPC", exc_info=True)
                    await context.abort(grpc.StatusCode.INTERNAL, "Internal server error")

            return mapped

        return _wrap_unary(handler, wrapper)


def seed_chain(service_name: str, redis_url: str, rate_limit: int) -> list[Any]:
    """``BaseGrpcServer._build_interceptors()`` of seed 000 section 3.3, every switch on."""
    return [
        MetricsInterceptor(service_name=service_name),
        AuthInterceptor(require_auth=True, exempt_methods=[]),
        RateLimiterInterceptor(max_requests=rate_limit, window_seconds=60, redis_url=redis_url),
        MetadataInterceptor(auto_generate=True),
        LoggingInterceptor(),
        ErrorHandlingInterceptor(),
    ]
