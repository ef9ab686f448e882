"""ConcurrencyLimit: at most N calls in flight on this server, RESOURCE_EXHAUSTED beyond.

The equivalent of grpcio's ``maximum_concurrent_rpcs`` (GRPC_MAX_CONCURRENT_RPCS). Health and
reflection are not counted, so probes keep working under load.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from .base import Middleware, not_health_or_reflection

if TYPE_CHECKING:
    from grpclib.events import RecvRequest

    from ..context import CallContext

_ADMITTED = "concurrency.admitted"


class ConcurrencyLimitMiddleware(Middleware):
    name = "concurrency"
    trusted = True

    def __init__(self, max_calls: int, **kwargs: Any) -> None:
        kwargs.setdefault("selector", not_health_or_reflection)
        super().__init__(**kwargs)
        if max_calls <= 0:
            raise ValueError("max_calls must be positive")
        self.max_calls = max_calls
        self.in_flight = 0

    def on_request(self, event: RecvRequest, call: CallContext) -> None:
        if self.in_flight >= self.max_calls:
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"concurrent call limit of {self.max_calls} exceeded",
            )
        self.in_flight += 1
        call.extra[_ADMITTED] = True

    def hand_over(self, call: CallContext) -> Callable[[], None] | None:
        """Pass the call's slot to work that outlives it (a cache load); the returned
        function frees it. None if the call holds no slot."""
        if not call.extra.pop(_ADMITTED, False):
            return None
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.in_flight -= 1

        return release

    def on_done(self, call: CallContext) -> None:
        if call.extra.get(_ADMITTED):
            self.in_flight -= 1
