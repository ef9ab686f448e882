"""RateLimit: per caller (user id, or peer address when anonymous) and an optional global limit.

Over the limit the call gets RESOURCE_EXHAUSTED with a retry-after hint twice over: a
``retry-after-ms`` trailer and a ``google.rpc.RetryInfo`` in the status details (which grpcio's
``grpc_status`` and the stack's own client read). Health and reflection are not limited.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from google.protobuf.duration_pb2 import Duration
from google.rpc.error_details_pb2 import RetryInfo
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from ..ratelimit import Decision, Limit, MemoryLimiter, RedisLimiter
from .base import Middleware, not_health_or_reflection

if TYPE_CHECKING:
    from grpclib.events import RecvRequest, SendTrailingMetadata

    from ..context import CallContext

RETRY_AFTER_KEY = "retry-after-ms"


class RateLimitMiddleware(Middleware):
    name = "ratelimit"
    trusted = True

    def __init__(
        self,
        limiter: MemoryLimiter | RedisLimiter,
        *,
        max_requests: int,
        global_max_requests: int = 0,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("selector", not_health_or_reflection)
        super().__init__(**kwargs)
        self.limiter = limiter
        self.max_requests = max_requests
        self.global_limit = Limit("global", global_max_requests) if global_max_requests else None
        self._user_limits: dict[str, list[Limit]] = {}  # limit key -> the limits of a call
        self._by_user: dict[str, list[Limit]] = {}  # user id -> the same lists
        memory = isinstance(limiter, MemoryLimiter)
        self.on_request = self._on_request_memory if memory else self._on_request_redis  # type: ignore[assignment]

    def _limits(self, call: CallContext) -> list[Limit]:
        user = call.user_id
        limits = self._by_user.get(user) if user else None
        if limits is not None:
            return limits
        key = f"user:{user}" if user else f"peer:{call.peer_host or 'unknown'}"
        limits = self._user_limits.get(key)
        if limits is None:
            if len(self._user_limits) > 100_000:  # bounded caches of Limit lists
                self._user_limits.clear()
                self._by_user.clear()
            limit = Limit(key, self.max_requests)
            limits = [limit, self.global_limit] if self.global_limit else [limit]
            self._user_limits[key] = limits
        if user:
            self._by_user[user] = limits
        return limits

    def _on_request_memory(self, event: RecvRequest, call: CallContext) -> None:
        assert isinstance(self.limiter, MemoryLimiter)
        decision = self.limiter.hit(self._limits(call))
        if not decision.allowed:
            raise self._refuse(decision, call)

    async def _on_request_redis(self, event: RecvRequest, call: CallContext) -> None:
        assert isinstance(self.limiter, RedisLimiter)
        limits = self._limits(call)
        if self.limiter.take(limits):  # a leased token: no round trip
            return
        decision = await self.limiter.hit(limits)
        if not decision.allowed:
            raise self._refuse(decision, call)

    def _refuse(self, decision: Decision, call: CallContext) -> GRPCError:
        retry_ms = max(1, round(decision.retry_after * 1000))
        call.extra[RETRY_AFTER_KEY] = retry_ms
        if decision.limit is None:  # Redis down and configured to fail closed
            return GRPCError(Status.UNAVAILABLE, "rate limiter unavailable")
        scope = "global" if decision.limit.key == "global" else "per-caller"
        delay = Duration()
        delay.FromMilliseconds(retry_ms)
        return GRPCError(
            Status.RESOURCE_EXHAUSTED,
            f"{scope} rate limit of {decision.limit.max_requests} requests per "
            f"{self.limiter.window:g}s exceeded; retry in {retry_ms / 1000:.3f}s",
            [RetryInfo(retry_delay=delay)],
        )

    def on_trailers(self, event: SendTrailingMetadata, call: CallContext) -> None:
        retry_ms = call.extra.get(RETRY_AFTER_KEY)
        if retry_ms is not None:
            event.metadata[RETRY_AFTER_KEY] = str(retry_ms)
