"""The Middleware base class and method selectors.

A middleware implements any of these hooks; hooks it does not define cost nothing per call:

``[async] on_request(event: RecvRequest, call: CallContext)``
    in chain order, in the call's own task, before the handler; raise ``GRPCError`` to reject
``[async] on_initial_metadata(event: SendInitialMetadata, call)``
    in reverse order, only for middlewares whose ``on_request`` ran; may add ``event.metadata``
``[async] on_trailers(event: SendTrailingMetadata, call)``
    like ``on_initial_metadata``, for the trailers (``event.status`` is the call's status)
``on_done(call)``
    synchronous, in reverse order, exactly once per call that reached the middleware: also for
    calls cancelled by the client, by a lost connection or by a stop
``wrap(func, method, handler) -> func``
    applied once at start to every handler function the selector admits (innermost last)
``async start(server)`` / ``async stop()``
    lifecycle: after resources open / before they close

The three event hooks may be coroutine functions or plain functions (cheaper when they never
await).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from grpclib.const import Handler
    from grpclib.events import RecvRequest, SendInitialMetadata, SendTrailingMetadata

    from ..context import CallContext

#: full method name ("/pkg.Service/Method") -> whether a middleware applies to it
Selector = Callable[[str], bool]
HandlerFunc = Callable[[Any], Awaitable[None]]

HEALTH_SERVICE = "grpc.health.v1.Health"
REFLECTION_SERVICES = frozenset(
    {"grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"}
)


def service_of(method: str) -> str:
    return method.split("/")[1] if method.count("/") == 2 else ""


def all_methods(method: str) -> bool:
    return True


def methods(*names: str) -> Selector:
    """Exactly these full method names."""
    wanted = frozenset(names)
    return wanted.__contains__


def services(*names: str) -> Selector:
    """Every method of exactly these services ("pkg.Service")."""
    wanted = frozenset(names)
    return lambda method: service_of(method) in wanted


def exclude(selector: Selector) -> Selector:
    return lambda method: not selector(method)


def all_but(*selectors: Selector) -> Selector:
    return lambda method: not any(s(method) for s in selectors)


#: everything but grpc.health.v1 and server reflection (for probes and tooling)
not_health_or_reflection: Selector = all_but(services(HEALTH_SERVICE, *REFLECTION_SERVICES))


class Middleware:
    """Base class: set ``selector`` (constructor argument) to restrict it to some methods."""

    name: ClassVar[str] = "middleware"
    #: built-in middlewares produce valid metadata; others are checked after their hooks
    trusted: ClassVar[bool] = False

    on_request: Callable[[RecvRequest, CallContext], Awaitable[None] | None] | None = None
    on_initial_metadata: (
        Callable[[SendInitialMetadata, CallContext], Awaitable[None] | None] | None
    ) = None
    on_trailers: Callable[[SendTrailingMetadata, CallContext], Awaitable[None] | None] | None = None
    on_done: Callable[[CallContext], None] | None = None
    wrap: Callable[[HandlerFunc, str, Handler], HandlerFunc] | None = None

    def __init__(self, *, selector: Selector | None = None) -> None:
        self.selector: Selector = selector or all_methods

    def applies_to(self, method: str) -> bool:
        return self.selector(method)

    async def start(self, server: Any) -> None:
        """Called once after the server's resources are open, before the port is bound.
        ``server`` is the AsyncBaseServer (untyped here: the middleware layer sits below it)."""

    async def stop(self) -> None:
        """Called once after the server stopped serving."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


def names(middlewares: Iterable[Middleware]) -> list[str]:
    return [m.name for m in middlewares]
