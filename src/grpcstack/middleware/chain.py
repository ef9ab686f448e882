"""The chain: one grpclib listener per event for all middlewares, with onion semantics.

Per method, the middlewares its selectors admit are resolved once at start into a plan. Request
hooks run in chain order; initial-metadata, trailer and done hooks in reverse order and only for
middlewares whose request hook was reached (a call Auth rejects is never seen by RateLimit).

The chain protects grpclib from its own listeners: grpclib sends no trailers at all when a
SendTrailingMetadata listener raises or leaves metadata it cannot encode, and the client then
hangs until its deadline. So hook errors are logged and swallowed there, and metadata written by
untrusted middleware is validated and rolled back when invalid.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from grpclib.const import Handler, Status
from grpclib.events import RecvRequest, SendInitialMetadata, SendTrailingMetadata, listen
from grpclib.exceptions import GRPCError
from grpclib.metadata import encode_metadata
from multidict import MultiDict

from ..context import _current
from .base import Middleware

if TYPE_CHECKING:
    from ..context import CallContext

log = logging.getLogger("grpcstack.middleware")

DEADLINE_SLACK_SECONDS = 0.01

_Hooks = tuple[tuple[int, Any, bool, bool], ...]  # (position, hook, trusted, is_async)


@dataclass(frozen=True)
class _Plan:
    request: _Hooks
    initial: _Hooks
    trailers: _Hooks
    done: tuple[tuple[int, Any], ...]
    size: int  # middlewares selected for the method: all reached when on_request passed


_EMPTY = _Plan((), (), (), (), 0)


class MiddlewareChain:
    def __init__(self, middlewares: Sequence[Middleware]) -> None:
        self.middlewares = list(middlewares)
        self._plans: dict[str, _Plan] = {}
        self._server: Any = None
        self._initial_listening = False
        for m in self.middlewares:
            done = getattr(m, "on_done", None)
            if done is not None and inspect.iscoroutinefunction(done):
                # finish() runs synchronously as the call task ends: it would never be awaited
                raise TypeError(
                    f"{type(m).__name__}.on_done must be a plain def (it runs after the call "
                    "ended and is not awaited); start a task from it for async work"
                )

    def _plan_for(self, method: str) -> _Plan:
        selected = [m for m in self.middlewares if m.applies_to(method)]

        def hooks(attr: str) -> list[tuple[int, Any, bool, bool]]:
            # hooks may be plain functions: a call then costs no coroutine object
            return [
                (pos, hook, m.trusted, inspect.iscoroutinefunction(hook))
                for pos, m in enumerate(selected, 1)
                if (hook := getattr(m, attr)) is not None
            ]

        return _Plan(
            request=tuple(hooks("on_request")),
            initial=tuple(reversed(hooks("on_initial_metadata"))),
            trailers=tuple(reversed(hooks("on_trailers"))),
            done=tuple((pos, hook) for pos, hook, _, _ in reversed(hooks("on_done"))),
            size=len(selected),
        )

    # --- start-up ---------------------------------------------------------------------

    def wrap_services(self, services: Sequence[Any]) -> list[Any]:
        """Services whose handler functions are wrapped by the middlewares' ``wrap`` hooks."""
        return [_WrappedService(service, self) for service in services]

    def attach(self, server: Any) -> None:
        for method in server.mapping:
            self._plans[method] = self._plan_for(method)
        self._server = server
        listen(server, RecvRequest, self._on_request)
        if any(p.initial for p in self._plans.values()):
            self.listen_initial_metadata()
        listen(server, SendTrailingMetadata, self._on_trailers)
        server.on_call_done = self.finish

    def listen_initial_metadata(self) -> None:
        """Listen to response headers. Only when a middleware has an ``on_initial_metadata``
        hook: the listener costs ~7 us per call (the call's own response headers, from
        ``add_initial_metadata`` or the correlation id, are written by the transport)."""
        if not self._initial_listening and self._server is not None:
            self._initial_listening = True
            listen(self._server, SendInitialMetadata, self._on_initial_metadata)

    # --- events -------------------------------------------------------------------------

    async def _on_request(self, event: RecvRequest) -> None:
        call = _current.get()
        if call is None:
            return
        call.chain = self
        plan = self._plans.get(event.method_name, _EMPTY)
        try:
            for pos, hook, _, is_async in plan.request:
                call.depth = pos
                if is_async:
                    await hook(event, call)
                else:
                    hook(event, call)
            call.depth = plan.size
        except GRPCError:
            raise
        except Exception as exc:
            call.exception = exc
            log.exception("middleware failed in on_request for %s", event.method_name)
            raise GRPCError(Status.INTERNAL, "Internal error") from None

    async def _on_initial_metadata(self, event: SendInitialMetadata) -> None:
        call = _current.get()
        if call is None:
            return
        call.initial_metadata_sent = True
        hooks = self._plans.get(call.method, _EMPTY).initial
        if hooks:
            await self._run_response_hooks(hooks, event, call, "initial")

    async def _on_trailers(self, event: SendTrailingMetadata) -> None:
        call = _current.get()
        if call is None:
            return
        call.status = _cancelled_status(call) if call.peer_cancelled else event.status
        call.status_message = event.status_message
        if call.response_initial_metadata and not call.initial_metadata_sent:
            # trailers-only response (no message was sent): these are its only headers
            event.metadata.extend(call.response_initial_metadata)
        if call.response_trailing_metadata:
            event.metadata.extend(call.response_trailing_metadata)
        hooks = self._plans.get(call.method, _EMPTY).trailers
        if hooks:
            await self._run_response_hooks(hooks, event, call, "trailing")

    async def _run_response_hooks(
        self, hooks: _Hooks, event: Any, call: CallContext, kind: str
    ) -> None:
        depth = call.depth
        for pos, hook, trusted, is_async in hooks:
            if pos > depth:
                continue
            before = None if trusted else MultiDict(event.metadata)
            try:
                if is_async:
                    await hook(event, call)
                else:
                    hook(event, call)
            except Exception:
                log.exception("middleware failed in %s metadata hook for %s", kind, call.method)
            if before is not None:
                try:
                    encode_metadata(event.metadata)
                except (TypeError, ValueError) as exc:
                    log.error("middleware wrote invalid %s metadata (%s): reverted", kind, exc)
                    event.metadata = before

    def finish(self, call: CallContext) -> None:
        """Close the books of a call: exactly once, from the call task's last step."""
        if call.peer_cancelled or call.status is None:
            # no trailers reached the client: cancelled by it, or its connection was lost
            call.status = _cancelled_status(call)
        hooks = self._plans.get(call.method, _EMPTY).done
        if not hooks:
            return
        call.duration = time.perf_counter() - call.start
        depth = call.depth
        for pos, hook in hooks:
            if pos <= depth:
                try:
                    hook(call)
                except Exception:
                    log.exception("middleware failed in on_done for %s", call.method)


def _cancelled_status(call: CallContext) -> Status:
    """A client that resets the stream at its deadline gave up on the deadline. The server's copy
    of the deadline starts a little later (transit), hence the slack."""
    deadline = call.deadline
    if deadline is not None and deadline.time_remaining() <= DEADLINE_SLACK_SECONDS:
        return Status.DEADLINE_EXCEEDED
    return Status.CANCELLED


class _WrappedService:
    """A servable whose ``__mapping__`` has the middlewares' ``wrap`` hooks applied, once."""

    def __init__(self, service: Any, chain: MiddlewareChain) -> None:
        self.service = service
        self._mapping: dict[str, Handler] = {}
        for method, handler in service.__mapping__().items():
            if handler is None:
                self._mapping[method] = handler
                continue
            func = handler.func
            for m in reversed(chain.middlewares):  # the first middleware ends up outermost
                if m.wrap is not None and m.applies_to(method):
                    func = m.wrap(func, method, handler)
            self._mapping[method] = handler._replace(func=func)

    def __mapping__(self) -> dict[str, Handler]:
        return self._mapping
