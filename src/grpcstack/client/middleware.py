"""Client middleware: the server chain's hook style, for outgoing calls.

A middleware implements any of these hooks; hooks it does not define cost nothing per call:

``on_start(call: ClientCallInfo)``
    before the first attempt, in chain order; may edit ``call.metadata`` (e.g. inject a trace
    context: the seam for client spans) or raise ``GRPCError`` to fail the call without sending
``on_attempt(call, attempt: int, transparent: bool)``
    before every attempt after the first (retries, hedges, transparent retries)
``on_message_sent(call)`` / ``on_message_received(call)``
    per request / response message
``on_done(call)``
    exactly once per started call, in reverse order, with ``call.status`` set (also for
    cancelled calls: CANCELLED)

Select the methods a middleware applies to with ``selector`` (as the server's middleware).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, ClassVar

from grpclib.const import Cardinality, Status

from ..context import GRPC_TYPES
from ..middleware.base import Selector, all_methods


class ClientCallInfo:
    """State of one outgoing call, shared by its attempts. Middlewares read and write it."""

    __slots__ = (
        "attempts",
        "cardinality",
        "deadline",
        "duration",
        "extra",
        "metadata",
        "method",
        "method_name",
        "msg_received",
        "msg_sent",
        "peer",
        "service",
        "start",
        "status",
        "status_message",
        "transparent_retries",
    )

    def __init__(
        self, method: str, cardinality: Cardinality, metadata: list[tuple[str, str | bytes]]
    ) -> None:
        self.method = method
        _, self.service, self.method_name = method.split("/", 2)
        self.cardinality = cardinality
        #: outgoing metadata; middlewares may append (key, value) pairs in on_start
        self.metadata = metadata
        #: absolute deadline on the loop clock (time.monotonic), None = no deadline
        self.deadline: float | None = None
        self.start = time.perf_counter()
        self.duration: float | None = None
        self.attempts = 0
        self.transparent_retries = 0
        self.msg_sent = 0
        self.msg_received = 0
        #: "host:port" of the target of the last attempt
        self.peer: str | None = None
        self.status: Status | None = None
        self.status_message: str | None = None
        self.extra: dict[str, Any] = {}

    @property
    def grpc_type(self) -> str:
        return GRPC_TYPES[self.cardinality]

    def time_remaining(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def __repr__(self) -> str:
        return f"<ClientCallInfo {self.method} status={self.status} attempts={self.attempts}>"


class ClientMiddleware:
    """Base class of client middleware; set ``selector`` to restrict it to some methods."""

    name: ClassVar[str] = "client-middleware"

    on_start: Callable[[ClientCallInfo], None] | None = None
    on_attempt: Callable[[ClientCallInfo, int, bool], None] | None = None
    on_message_sent: Callable[[ClientCallInfo], None] | None = None
    on_message_received: Callable[[ClientCallInfo], None] | None = None
    on_done: Callable[[ClientCallInfo], None] | None = None

    def __init__(self, *, selector: Selector | None = None) -> None:
        self.selector: Selector = selector or all_methods

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class Hooks:
    """The hooks of a middleware list that apply to one method, resolved once per method."""

    __slots__ = ("on_attempt", "on_done", "on_message_received", "on_message_sent", "on_start")

    def __init__(self, middlewares: list[ClientMiddleware], method: str) -> None:
        applying = [m for m in middlewares if m.selector(method)]

        def collect(name: str, reverse: bool = False) -> tuple[Callable[..., None], ...]:
            found = [getattr(m, name) for m in applying if getattr(m, name) is not None]
            return tuple(reversed(found) if reverse else found)

        self.on_start = collect("on_start")
        self.on_attempt = collect("on_attempt")
        self.on_message_sent = collect("on_message_sent")
        self.on_message_received = collect("on_message_received")
        self.on_done = collect("on_done", reverse=True)


NO_HOOKS = Hooks([], "/x/y")
