"""From a request's headers to its handler: validation, deadlines, statuses, one done callback.

``handle_request`` is grpclib's ``request_handler`` with the per-call context, statuses that say
what happened (an expired deadline is DEADLINE_EXCEEDED, a reset is CANCELLED, a stop past its
grace is UNAVAILABLE), bad metadata answered instead of dropped, and exactly one call of the
server's ``on_call_done`` per call so the middleware can close its books.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.metadata import Deadline, encode_grpc_message
from grpclib.utils import Wrapper
from h2.errors import ErrorCodes
from multidict import MultiDict

from .._compat import ServerH2Stream, ServerHandlerBase
from ..compression import ACCEPT_ENCODING, IDENTITY, SUPPORTED, accepts_gzip
from ..context import CallContext, set_current
from .head import RequestHead
from .policy import Dispatcher, MessageRoom
from .stream import LimitedStream

if TYPE_CHECKING:
    from grpclib import protocol
    from grpclib.const import Handler as MethodHandler
    from grpclib.events import _DispatchServerEvents

log = logging.getLogger("grpcstack.transport")

_Headers = list[tuple[str, str]]


class StackHandler(ServerHandlerBase):
    """Per-connection handler: starts ``handle_request`` tasks and tracks them on the server."""

    protocol: MessageRoom

    def __init__(self, server: Dispatcher) -> None:
        super().__init__(
            server.mapping, server.codec, server.status_details_codec, server.__dispatch__
        )
        self.server = server

    def accept(
        self,
        stream: ServerH2Stream,
        head: RequestHead,
        release_stream: Callable[[], Any],
    ) -> None:
        # no grpclib GC step (a sweep of the task table every 10 calls): the stream's release
        # drops its task, and a cancelled task leaves its set when done
        task = self.loop.create_task(
            handle_request(self.server, self.protocol, stream, head, release_stream)
        )
        stream.call_task = task
        self.tasks[stream] = task
        self.server.track(task)

    def cancel(self, stream: ServerH2Stream) -> None:  # type: ignore[override]
        """RST_STREAM from the client. grpclib cancels the request task, but a task cancelled
        before its first step never runs at all: no status, no metrics, and its stream is never
        released. Such a task is left to start and ends the call as CANCELLED itself, before
        any middleware hook runs."""
        task = self.tasks.pop(stream, None)
        if task is None:
            return
        if stream.call_started:
            task.cancel()
            cancelled = self.cancelled_tasks
            cancelled.add(task)
            task.add_done_callback(cancelled.discard)
        else:
            stream.reset_early = True


class _CallWrapper(Wrapper):
    """grpclib's Wrapper for the one task a call runs in (grpclib cancels a call through its
    stream's wrapper on reset or lost connection), with the call's deadline timer: when
    ``timeout`` seconds have passed inside it, the task is cancelled with TimeoutError.
    grpclib's looks the current task up on every enter and exit and keeps a set of them; the
    call's task is known."""

    _error: Exception | None = None

    def __init__(self, task: asyncio.Task[Any] | None, timeout: float | None = None) -> None:
        self._task = task
        self._inside = False
        self._timeout = timeout
        self._timer: asyncio.TimerHandle | None = None

    def __enter__(self) -> None:
        if self._error is not None:
            raise self._error
        if self._task is None:
            raise RuntimeError("Called not inside a task")
        self._inside = True
        if self._timeout is not None:
            self._timer = asyncio.get_running_loop().call_later(self._timeout, self._expired)

    def _expired(self) -> None:
        self.cancel(TimeoutError("Deadline exceeded"))

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        self._inside = False
        if self._timer is not None:
            self._timer.cancel()
        if self._error is not None:
            self.cancel_failed = exc_type is not asyncio.CancelledError
            raise self._error

    def cancel(self, error: Exception) -> None:
        self._error = error
        if self._inside and self._task is not None:
            self._task.cancel()
        self.cancelled = True


async def _abort(
    stream: protocol.Stream, status: Status, message: str, extra: _Headers | None = None
) -> None:
    """Trailers-only gRPC error response (HTTP 200), then reset the stream."""
    headers = [
        (":status", "200"),
        ("content-type", "application/grpc"),
        ("grpc-status", str(status.value)),
        ("grpc-message", encode_grpc_message(message)),
        *(extra or []),
    ]
    await stream.send_headers(headers, end_stream=True)
    if stream.closable:
        stream.reset_nowait()


async def _abort_http(stream: protocol.Stream, http_status: int, message: str) -> None:
    headers = [
        (":status", str(http_status)),
        ("grpc-status", str(Status.UNKNOWN.value)),
        ("grpc-message", message),
    ]
    await stream.send_headers(headers, end_stream=True)
    if stream.closable:
        stream.reset_nowait()


async def handle_request(
    server: Dispatcher,
    conn: MessageRoom,
    h2_stream: ServerH2Stream,
    head: RequestHead,
    release_stream: Callable[[], Any],
) -> None:
    call: CallContext | None = None
    h2_stream.call_started = True
    try:
        if h2_stream.reset_early:
            return  # reset before this task ran: nothing of the call has happened
        headers_map = head.map
        if headers_map.get(":method") != "POST":
            await _abort_http(h2_stream, 405, "Method not allowed")
            return
        content_type = headers_map.get("content-type") or ""
        base, _, subtype = content_type.partition("+")
        if base != "application/grpc" or (subtype and subtype != server.codec.__content_subtype__):
            await _abort_http(h2_stream, 415, "Unacceptable content-type header")
            return
        method_name = headers_map.get(":path", "")
        method: MethodHandler | None = server.mapping.get(method_name)
        if method is None:
            await _abort(h2_stream, Status.UNIMPLEMENTED, f"Method not found: {method_name}")
            return
        try:
            timeout = head.timeout()
        except ValueError:
            await _abort(h2_stream, Status.INVALID_ARGUMENT, "Invalid grpc-timeout header")
            return
        deadline = None if timeout is None else Deadline.from_timeout(timeout)
        encoding = headers_map.get("grpc-encoding", IDENTITY)
        if encoding not in SUPPORTED:
            await _abort(
                h2_stream,
                Status.UNIMPLEMENTED,
                f"Unsupported grpc-encoding {encoding!r}",
                [("grpc-accept-encoding", ACCEPT_ENCODING)],
            )
            return
        try:
            metadata = MultiDict(head.metadata())
        except (binascii.Error, ValueError):
            await _abort(h2_stream, Status.INVALID_ARGUMENT, "Invalid base64 in binary metadata")
            return
        accept_header = headers_map.get("grpc-accept-encoding")
        user_agent = headers_map.get("user-agent")
        dispatch: _DispatchServerEvents = server.__dispatch__

        async with LimitedStream(
            h2_stream,
            method_name,
            method.cardinality,
            method.request_type,
            method.reply_type,
            codec=server.codec,
            status_details_codec=server.status_details_codec,
            dispatch=dispatch,
            deadline=deadline,
            user_agent=user_agent,
        ) as stream:
            stream.conn = conn
            stream.max_receive_length = server.max_receive_message_length
            stream.max_send_length = server.max_send_message_length
            stream.request_encoding = encoding
            if accept_header is not None:
                stream.compression_aware = True
                stream.accepts_gzip = accepts_gzip(accept_header)
            stream.compress_by_default = server.compress_by_default
            call = stream.call = CallContext(
                method_name, method.cardinality, metadata, stream.peer, deadline
            )
            set_current(call)
            wrapper: Wrapper
            # already expired (grpc-timeout 0S, 1n...): the hooks run (the call is counted),
            # the handler does not, and the answer is DEADLINE_EXCEEDED
            remaining = 0.0 if deadline is None else deadline.time_remaining()
            expired = deadline is not None and remaining <= 0
            # not grpclib's DeadlineWrapper.start(): it re-reads the clock and raises at entry
            # when the deadline passed since our check, before any hook counted the call
            wrapper = h2_stream.wrapper = _CallWrapper(
                h2_stream.call_task, None if deadline is None or expired else remaining
            )
            try:
                with wrapper:
                    stream.metadata, method_func = await dispatch.recv_request(
                        metadata,
                        method.func,
                        method_name=method_name,
                        deadline=deadline,
                        content_type=content_type,
                        user_agent=user_agent,
                        peer=stream.peer,
                    )
                    if expired:
                        raise GRPCError(Status.DEADLINE_EXCEEDED, "Deadline exceeded")
                    await method_func(stream)
            except GRPCError:
                raise
            except asyncio.CancelledError:
                if server.stopping:
                    # the server's grace period ran out: tell the client, don't just vanish
                    raise GRPCError(Status.UNAVAILABLE, "Server is shutting down") from None
                call.peer_cancelled = True  # the connection was lost
                raise
            except TimeoutError:
                # a TimeoutError once the call's deadline has passed is DEADLINE_EXCEEDED too,
                # whoever raised it first (our timer, or a handler timing out on it)
                passed = deadline is not None and deadline.time_remaining() <= 0
                if wrapper.cancelled or wrapper.cancel_failed or passed:
                    raise GRPCError(Status.DEADLINE_EXCEEDED, "Deadline exceeded") from None
                log.exception("Application error in %s", method_name)
                raise
            except StreamTerminatedError:
                # RST_STREAM from the client or a lost connection: the call is CANCELLED
                call.peer_cancelled = True
                raise GRPCError(Status.CANCELLED, "Cancelled by the client") from None
            except Exception:
                log.exception("Application error in %s", method_name)
                raise
    except (asyncio.CancelledError, StreamTerminatedError):
        pass
    except Exception:
        log.debug("request ended with an error", exc_info=True)
        if h2_stream.closable:  # never leave a stream open with nothing sent
            h2_stream.reset_nowait(ErrorCodes.INTERNAL_ERROR)
    finally:
        release_stream()
        if call is not None:
            done = server.on_call_done
            if done is not None:
                done(call)
