"""The grpclib server as grpcstack runs it: the one module that touches grpclib internals.

grpclib 0.4.9 (pinned in pyproject.toml) lacks what a production server needs, so this module
replaces these private pieces and nothing else (it is longer than our other modules for that
reason: every grpclib internal we depend on is here, in one place):

* ``Server._protocol_factory``: our protocol advertises MAX_CONCURRENT_STREAMS and the window
  sizes in the first SETTINGS frame, coalesces the frames written while handling one read into
  one ``transport.write`` (a unary response is one TCP segment, not three), sends correlation ids
  as plain never-indexed HPACK literals, and is tracked so that a stop can GOAWAY every connection.
* ``Handler.accept``/``cancel``: request tasks run our ``handle_request`` (a copy of grpclib's
  ``request_handler`` with the per-call context, drain rejection and correct statuses for
  cancelled calls), are tracked for a drain-style stop, and are never lost when reset early.
* ``Stream.recv_message``/``send_message``/``send_initial_metadata``: the 5-byte length prefix
  is checked against the max message length BEFORE the body is read (so an oversized message is
  never buffered beyond the HTTP/2 window), and gzip message compression, which grpclib lacks.

``tests/test_transport.py`` fails loudly when a grpclib upgrade moves any of these.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
import weakref
from collections.abc import Callable
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, cast

import grpclib
import grpclib.server
from grpclib.const import Status
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError
from grpclib.metadata import Deadline, decode_metadata, encode_metadata
from grpclib.protocol import Connection, EventsProcessor, H2Protocol
from grpclib.utils import DeadlineWrapper, Wrapper
from h2.connection import H2Connection
from h2.settings import SettingCodes, Settings
from hpack import Encoder
from hpack.hpack import INDEX_NEVER
from multidict import MultiDict

from .codec import DecodeError
from .compression import (
    ACCEPT_ENCODING,
    GZIP,
    IDENTITY,
    SUPPORTED,
    Corrupt,
    TooLarge,
    accepts_gzip,
    gzip_compress,
    gzip_decompress,
)
from .context import CallContext, set_current

if TYPE_CHECKING:
    from grpclib import protocol
    from grpclib.const import Handler as MethodHandler
    from grpclib.events import _DispatchServerEvents

    from .middleware.chain import MiddlewareChain


log = logging.getLogger("grpcstack.transport")

_Headers = list[tuple[str, str]]
_PREFIX = struct.Struct(">?I")


class CoalescingTransport:
    """Buffers grpclib's writes and hands them to the real transport in one ``write``.

    A flush is queued with ``call_soon``: behind the request tasks a read just created, so the
    frames they produce in their first step go out together.
    """

    __slots__ = ("_buf", "_loop", "_scheduled", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._buf: list[bytes] = []
        self._scheduled = False

    def write(self, data: bytes) -> None:
        if data:
            self._buf.append(data)
            if not self._scheduled:
                self._scheduled = True
                self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        buf = self._buf
        if buf:
            self._buf = []
            if not self._transport.is_closing():
                self._transport.write(buf[0] if len(buf) == 1 else b"".join(buf))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:  # is_closing, get_extra_info, abort ...
        return getattr(self._transport, name)


class StackEncoder(Encoder):
    """HPACK encoder that sends per-call unique values (correlation ids) as plain never-indexed
    literals: Huffman-coding a fresh 32-character id costs ~8 us in pure Python and adding it to
    the dynamic table only evicts entries that do repeat."""

    UNIQUE = frozenset({b"x-correlation-id"})

    def add(self, to_add: tuple[bytes, bytes], sensitive: bool, huffman: bool = False) -> bytes:
        name, value = to_add
        if name in self.UNIQUE:
            return self._encode_literal(name, value, INDEX_NEVER, False)  # type: ignore[no-any-return]
        return super().add(to_add, sensitive, huffman)  # type: ignore[no-any-return]


class StackProtocol(H2Protocol):
    """grpclib's H2Protocol with our initial SETTINGS and write coalescing."""

    _proxy: CoalescingTransport

    def __init__(self, server: GrpcServer, handler: StackHandler) -> None:
        super().__init__(handler, server._config, server._h2_config)
        self._server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        loop = asyncio.get_running_loop()
        sock = transport.get_extra_info("socket")
        if sock is not None:
            grpclib.protocol._set_nodelay(sock)
        self._proxy = CoalescingTransport(cast(asyncio.Transport, transport), loop)

        h2_conn = H2Connection(config=self.h2_config)
        h2_conn.encoder = StackEncoder()
        # Values in force from the first SETTINGS frame on, not after a second round trip.
        h2_conn.local_settings = Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: self._server.max_concurrent_streams,
                SettingCodes.INITIAL_WINDOW_SIZE: self.config.http2_stream_window_size,
            },
        )
        h2_conn.initiate_connection()
        conn_delta = self.config.http2_connection_window_size - 65535
        if conn_delta > 0:
            h2_conn.increment_flow_control_window(conn_delta)

        self.connection = Connection(h2_conn, cast(Any, self._proxy), config=self.config)
        self.connection.flush()
        self.connection.initialize()
        self.processor = EventsProcessor(self.handler, self.connection)
        self._server._protocols.add(self)

    def data_received(self, data: bytes) -> None:
        proxy = self._proxy
        proxy._scheduled = True  # control frames written now wait for the handlers' frames
        try:
            super().data_received(data)
        finally:
            proxy._loop.call_soon(proxy.flush)

    def goaway(self) -> bool:
        """Send GOAWAY(NO_ERROR) and close; False when already closing."""
        conn = self.connection
        if conn.is_closing():
            return False
        try:
            conn._connection.close_connection()
            conn.flush()
        except Exception:  # h2 state may forbid GOAWAY on a broken connection
            log.debug("GOAWAY failed", exc_info=True)
        conn.close()
        return True


class LimitedStream(grpclib.server.Stream):  # type: ignore[type-arg]
    """A server Stream that rejects oversized messages on their length prefix, speaks gzip
    message compression, and counts messages for the call's metrics."""

    max_receive_length: int = 4 * 1024 * 1024
    max_send_length: int = 2**31 - 1
    call: CallContext
    request_encoding: str = IDENTITY
    accepts_gzip = False  # the client listed gzip in grpc-accept-encoding
    compression_aware = False  # the client sent grpc-accept-encoding at all
    compress_by_default = False

    async def recv_message(self) -> Any:
        meta = await self._stream.recv_data(5)
        if not meta:
            return None
        if len(meta) != 5:
            raise GRPCError(Status.INVALID_ARGUMENT, "Truncated message prefix")
        compressed, length = _PREFIX.unpack(meta)
        if compressed and self.request_encoding != GZIP:
            raise GRPCError(Status.INTERNAL, "Compressed message without a grpc-encoding")
        if length > self.max_receive_length:
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"Received message larger than max ({length} vs. {self.max_receive_length})",
            )
        data = await self._stream.recv_data(length)
        if len(data) != length:
            raise GRPCError(Status.INVALID_ARGUMENT, "Truncated message")
        if compressed:
            try:
                data = gzip_decompress(data, self.max_receive_length)
            except TooLarge as exc:
                raise GRPCError(Status.RESOURCE_EXHAUSTED, f"Received {exc}") from None
            except Corrupt:
                raise GRPCError(
                    Status.INTERNAL, "Could not decompress the request message"
                ) from None
        self.call.request_compressed = bool(compressed)
        try:
            message = self._codec.decode(data, self._recv_type)
        except DecodeError as exc:
            raise GRPCError(
                Status.INVALID_ARGUMENT, f"Could not parse the request message: {exc}"
            ) from None
        except Exception:
            log.info("undecodable %s request", self._method_name, exc_info=True)
            raise GRPCError(
                Status.INVALID_ARGUMENT, "Could not parse the request message"
            ) from None
        (message,) = await self._dispatch.recv_message(message)
        self._messages_received += 1
        self._stream.connection.messages_received += 1
        counter = self.call.msg_received
        if counter is not None:
            counter.inc()
        return message

    async def send_initial_metadata(self, *, metadata: Any = None) -> None:
        """grpclib's, plus the compression headers its metadata encoder refuses (grpc-*)."""
        if self._send_initial_metadata_done:
            raise ProtocolError("Initial metadata was already sent")
        headers = [(":status", "200"), ("content-type", self._content_type)]
        if self.accepts_gzip:
            headers.append(("grpc-encoding", GZIP))
        if self.compression_aware:
            headers.append(("grpc-accept-encoding", ACCEPT_ENCODING))
        (md,) = await self._dispatch.send_initial_metadata(MultiDict(metadata or ()))
        headers.extend(encode_metadata(md))
        await self._stream.send_headers(headers)
        self._send_initial_metadata_done = True

    async def send_message(self, message: Any) -> None:
        """grpclib's, compressing the message when the call asks for it and the client accepts."""
        if not self._send_initial_metadata_done:
            await self.send_initial_metadata()
        if not self._cardinality.server_streaming and self._send_message_done:
            raise ProtocolError("Message was already sent")
        (message,) = await self._dispatch.send_message(message)
        data = self._codec.encode(message, self._send_type)
        if len(data) > self.max_send_length:
            log.error(
                "%s: response of %d bytes is over the max message length %d",
                self._method_name,
                len(data),
                self.max_send_length,
            )
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"Sent message larger than max ({len(data)} vs. {self.max_send_length})",
            )
        compress = False
        if self.accepts_gzip:
            wanted = self.call.compress_response
            compress = self.compress_by_default if wanted is None else wanted
            if compress:
                data = gzip_compress(data)
        await self._stream.send_data(_PREFIX.pack(compress, len(data)) + data)
        self._send_message_done = True
        self._messages_sent += 1
        connection = self._stream.connection
        connection.messages_sent += 1
        connection.last_message_sent = time.monotonic()
        counter = self.call.msg_sent
        if counter is not None:
            counter.inc()


class StackHandler(grpclib.server.Handler):
    """Per-connection handler: starts ``handle_request`` tasks and tracks them on the server."""

    def __init__(self, server: GrpcServer) -> None:
        super().__init__(
            server._mapping, server._codec, server._status_details_codec, server.__dispatch__
        )
        self._server = server

    def accept(
        self,
        stream: protocol.Stream,
        headers: _Headers,
        release_stream: Callable[[], Any],
    ) -> None:
        self.__gc_step__()
        task = self.loop.create_task(handle_request(self._server, stream, headers, release_stream))
        self._tasks[stream] = task
        self._server._track(task)

    def cancel(self, stream: protocol.Stream) -> None:
        """RST_STREAM from the client. grpclib cancels the request task, but a task cancelled
        before its first step never runs at all: no status, no metrics, and its stream is never
        released. Such a task is left to start and ends the call as CANCELLED itself."""
        task = self._tasks.pop(stream, None)
        if task is None:
            return
        if getattr(stream, "_grpcstack_started", False):
            task.cancel()
            self._cancelled.add(task)
        else:
            stream._grpcstack_reset_early = True  # type: ignore[attr-defined]


class GrpcServer(grpclib.server.Server):
    """grpclib Server with stream limits, a message size limit, tracking and drain support."""

    def __init__(
        self,
        handlers: Any,
        *,
        max_concurrent_streams: int = 100,
        max_receive_message_length: int = 4 * 1024 * 1024,
        max_send_message_length: int = 2**31 - 1,
        compress_by_default: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(handlers, **kwargs)
        self.compress_by_default = compress_by_default
        self.max_send_message_length = max_send_message_length
        self.max_concurrent_streams = max_concurrent_streams
        self.max_receive_message_length = max_receive_message_length
        self._protocols: weakref.WeakSet[StackProtocol] = weakref.WeakSet()
        self.inflight: set[asyncio.Task[None]] = set()
        #: new calls are answered UNAVAILABLE while draining
        self.draining = False
        #: calls cancelled while stopping end with UNAVAILABLE instead of nothing
        self.stopping = False
        #: the middleware chain, which closes the books of every call (see middleware.chain)
        self.chain: MiddlewareChain | None = None

    def _protocol_factory(self) -> H2Protocol:
        self.__gc_step__()
        handler = StackHandler(self)
        self._handlers.add(handler)
        return StackProtocol(self, handler)

    def _track(self, task: asyncio.Task[None]) -> None:
        self.inflight.add(task)
        task.add_done_callback(self.inflight.discard)

    @property
    def listening_sockets(self) -> list[Any]:
        return list(self._server.sockets) if self._server is not None else []

    def stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()

    def cancel_inflight(self) -> set[asyncio.Task[None]]:
        tasks = {t for t in self.inflight if not t.done()}
        for task in tasks:
            task.cancel()
        return tasks

    def goaway_all(self) -> int:
        return sum(1 for protocol in list(self._protocols) if protocol.goaway())


async def _abort(
    stream: protocol.Stream, status: Status, message: str, extra: _Headers | None = None
) -> None:
    """Trailers-only gRPC error response (HTTP 200), then reset the stream."""
    headers = [
        (":status", "200"),
        ("content-type", "application/grpc"),
        ("grpc-status", str(status.value)),
        ("grpc-message", grpclib.metadata.encode_grpc_message(message)),
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
    server: GrpcServer,
    h2_stream: protocol.Stream,
    headers: _Headers,
    release_stream: Callable[[], Any],
) -> None:
    """grpclib's ``request_handler`` with drain rejection, a size limit, the per-call context,
    correct statuses for cancelled calls and one ``chain.finish`` per call."""
    call: CallContext | None = None
    h2_stream._grpcstack_started = True  # type: ignore[attr-defined]
    try:
        headers_map = dict(headers)
        if headers_map.get(":method") != "POST":
            await _abort_http(h2_stream, 405, "Method not allowed")
            return
        content_type = headers_map.get("content-type") or ""
        base, _, subtype = content_type.partition("+")
        if base != "application/grpc" or (subtype and subtype != server._codec.__content_subtype__):
            await _abort_http(h2_stream, 415, "Unacceptable content-type header")
            return
        if server.draining:
            await _abort(h2_stream, Status.UNAVAILABLE, "Server is shutting down")
            return
        method_name = headers_map.get(":path", "")
        method: MethodHandler | None = server._mapping.get(method_name)
        if method is None:
            await _abort(h2_stream, Status.UNIMPLEMENTED, f"Method not found: {method_name}")
            return
        try:
            deadline = Deadline.from_headers(headers)
        except ValueError:
            await _abort(h2_stream, Status.INVALID_ARGUMENT, "Invalid grpc-timeout header")
            return
        encoding = headers_map.get("grpc-encoding", IDENTITY)
        if encoding not in SUPPORTED:
            await _abort(
                h2_stream,
                Status.UNIMPLEMENTED,
                f"Unsupported grpc-encoding {encoding!r}",
                [("grpc-accept-encoding", ACCEPT_ENCODING)],
            )
            return
        accept_header = headers_map.get("grpc-accept-encoding")
        metadata = decode_metadata(headers)
        user_agent = headers_map.get("user-agent")
        dispatch: _DispatchServerEvents = server.__dispatch__

        async with LimitedStream(
            h2_stream,
            method_name,
            method.cardinality,
            method.request_type,
            method.reply_type,
            codec=server._codec,
            status_details_codec=server._status_details_codec,
            dispatch=dispatch,
            deadline=deadline,
            user_agent=user_agent,
        ) as stream:
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
            if deadline is None:
                wrapper = h2_stream.wrapper = Wrapper()
                deadline_ctx: Any = nullcontext()
            else:
                wrapper = h2_stream.wrapper = DeadlineWrapper()
                deadline_ctx = wrapper.start(deadline)
            try:
                with deadline_ctx, wrapper:
                    stream.metadata, method_func = await dispatch.recv_request(
                        metadata,
                        method.func,
                        method_name=method_name,
                        deadline=deadline,
                        content_type=content_type,
                        user_agent=user_agent,
                        peer=stream.peer,
                    )
                    if getattr(h2_stream, "_grpcstack_reset_early", False):
                        raise StreamTerminatedError("Stream reset before it was served")
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
                # DeadlineWrapper.start raises at entry, before setting `cancelled`, when the
                # deadline has already passed: that is DEADLINE_EXCEEDED too, not an app error
                expired = deadline is not None and deadline.time_remaining() <= 0
                if wrapper.cancelled or wrapper.cancel_failed or expired:
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
    finally:
        release_stream()
        if call is not None and server.chain is not None:
            server.chain.finish(call)
