"""grpclib's server side: its Stream, Handler and Server with their private state under public
names, and the request body buffer read without a suspension when the bytes are already there."""

from __future__ import annotations

import asyncio
from typing import Any

import grpclib.events
import grpclib.metadata
import grpclib.protocol
import grpclib.server
from grpclib.events import RecvRequest, SendInitialMetadata, SendTrailingMetadata
from h2.exceptions import StreamClosedError

GRPCLIB_VERSION = "0.4.9"

set_nodelay = grpclib.protocol._set_nodelay
#: the trailer that carries rich error details (grpclib's name for it)
STATUS_DETAILS_KEY: str = grpclib.metadata._STATUS_DETAILS_KEY
#: what grpclib's encode_metadata accepts as a (non-binary) metadata value
METADATA_VALUE_RE = grpclib.metadata._VALUE_RE


def drop_buffered(stream: grpclib.protocol.Stream) -> None:
    """Release the bytes a reset or abandoned stream still holds (acked and not yet read)."""
    buffer = stream.buffer
    buffer._acked.clear()
    buffer._acked_size = 0
    while not buffer._unacked.empty():
        buffer._unacked.get_nowait()


def take_unacked(stream: grpclib.protocol.Stream) -> int:
    """Empty the chunks of a stream's body not yet read into the buffer, and return their
    flow-control size (grpclib's ``Buffer.unacked_size``, which empties the queue too)."""
    queued = stream.buffer._unacked._queue  # asyncio.Queue's deque: no getter waits on a
    if not queued:  # stream whose call is over
        return 0
    size = sum(item.ack_size for item in queued)
    queued.clear()
    return size


def read_buffered(stream: grpclib.protocol.Stream, size: int) -> bytes | None:
    """``size`` bytes of the request body when they are all received already, else None (then
    ``await stream.recv_data(size)``). What grpclib's ``Buffer.read`` does for them, without its
    coroutine and queue steps: chunks are acked (flow control) as they are taken, in order. It
    stops at an empty chunk (grpclib's end-of-stream mark) and leaves it, and the short-read
    errors, to ``Buffer.read``."""
    if size <= 0:
        return None
    buffer = stream.buffer
    acked = buffer._acked
    acked_size = buffer._acked_size
    queued = buffer._unacked._queue  # asyncio.Queue's deque
    if not acked_size and queued:
        # the usual case: the message's first read, and its DATA frame holds all of it
        data, data_size, ack_size = queued[0]
        if ack_size and data_size >= size:
            queued.popleft()
            buffer._ack_callback(ack_size)
            if data_size == size:
                return bytes(data)
            view = memoryview(data)
            acked.append(grpclib.protocol.AckedData(view[size:], data_size - size))
            buffer._acked_size = data_size - size
            return bytes(view[:size])
    if acked_size < size:
        have = acked_size
        for item in queued:
            if not item.ack_size:
                break
            have += item.data_size
            if have >= size:
                break
        if have < size:
            return None
        ack = buffer._ack_callback
        while acked_size < size:
            data, data_size, ack_size = queued.popleft()
            acked.append(grpclib.protocol.AckedData(memoryview(data), data_size))
            acked_size += data_size
            buffer._acked_size = acked_size
            ack(ack_size)
    chunk, chunk_size = acked[0]
    if chunk_size == size:
        acked.popleft()
        buffer._acked_size = acked_size - size
        return bytes(chunk)
    if chunk_size > size:
        acked[0] = grpclib.protocol.AckedData(chunk[size:], chunk_size - size)
        buffer._acked_size = acked_size - size
        return bytes(chunk[:size])
    chunks = []
    taken = 0
    while taken < size:
        chunk, chunk_size = acked[0]
        if taken + chunk_size <= size:
            chunks.append(chunk)
            taken += chunk_size
            acked.popleft()
        else:
            offset = size - taken
            chunks.append(chunk[:offset])
            acked[0] = grpclib.protocol.AckedData(chunk[offset:], chunk_size - offset)
            taken = size
    buffer._acked_size = acked_size - size
    return b"".join(chunks)


_LAZY_EVENTS = frozenset({"window_updated", "headers_received", "trailers_received"})


class ServerH2Stream(grpclib.protocol.Stream):
    """grpclib's protocol Stream for a stream the peer opened (what ``Connection.create_stream``
    makes), with its three asyncio Events made when first used: a server call rarely waits for
    a window update and never for response headers or trailers. It also carries the call's own
    state (its task, whether the task started, a reset that came before it did)."""

    #: the task handling the call on this stream
    call_task: asyncio.Task[None] | None = None
    #: the call's task took its first step
    call_started = False
    #: the client reset the stream before the call's task took its first step
    reset_early = False

    def __init__(self, connection: grpclib.protocol.Connection, stream_id: int) -> None:
        self.connection = connection
        self._h2_connection = connection._connection
        self._transport = connection._transport
        self.wrapper = None
        self.init_stream(stream_id, connection)
        self.headers = None
        self.trailers = None

    def window_updated_now(self) -> None:
        """grpclib's ``window_updated.set()`` on a WINDOW_UPDATE: only a send that found no
        window waits on that Event, and it made it; none made, nobody to wake (gRPC clients send
        two WINDOW_UPDATEs per call, and one for the connection touches every stream)."""
        event = self.__dict__.get("window_updated")
        if event is not None:
            event.set()

    def __getattr__(self, name: str) -> Any:
        if name in _LAZY_EVENTS:
            event = asyncio.Event()
            setattr(self, name, event)
            return event
        raise AttributeError(name)


def send_headers_now(stream: grpclib.protocol.Stream, headers: Any, end_stream: bool) -> bool:
    """grpclib's ``Stream.send_headers`` without its coroutine when the transport takes writes
    (the same checks, h2 call, write and bookkeeping); False when it must wait: then await
    ``stream.send_headers``."""
    connection = stream.connection
    if not connection.write_ready.is_set():
        return False
    h2_conn = stream._h2_connection
    if stream.id not in h2_conn.streams:
        raise StreamClosedError(stream.id)
    h2_conn.send_headers(stream.id, headers, end_stream=end_stream)
    stream._transport.write(h2_conn.data_to_send())
    connection.headers_send_process()
    return True


def send_data_now(stream: grpclib.protocol.Stream, data: bytes, end_stream: bool = False) -> bool:
    """grpclib's ``Stream.send_data`` without its coroutine for data that goes in one frame
    within the flow-control window now; False otherwise: then await ``stream.send_data``."""
    connection = stream.connection
    size = len(data)
    if not size or not connection.write_ready.is_set():
        return False
    h2_conn = stream._h2_connection
    if size > h2_conn.local_flow_control_window(stream.id):
        return False
    if size > h2_conn.max_outbound_frame_size:
        return False
    h2_conn.send_data(stream.id, data, end_stream=end_stream)
    stream._transport.write(h2_conn.data_to_send())
    stream.data_sent += size
    connection.data_sent += size
    connection.data_send_process()
    return True


_set = object.__setattr__


class StackServerEvents(grpclib.events._DispatchServerEvents):
    """grpclib's server event dispatcher, building the three per-call events the middleware chain
    listens to without ``_Event.__init__``'s keyword dict and a ``super()`` per field, and
    dispatching them in the same coroutine: the same event objects, listeners, order and
    ``interrupt()``. Events nobody listens to still cost nothing (grpclib's ``_ident``)."""

    async def __dispatch__(self, event: Any) -> Any:
        for callback in self._listeners[event.__class__]:
            await callback(event)
            if event.__interrupted__:
                break
        return tuple([getattr(event, name) for name in event.__payload__])

    async def recv_request(  # type: ignore[override]
        self,
        metadata: Any,
        method_func: Any,
        *,
        method_name: str,
        deadline: Any,
        content_type: str,
        user_agent: str | None,
        peer: Any,
    ) -> tuple[Any, Any]:
        event = RecvRequest.__new__(RecvRequest)
        _set(event, "__interrupted__", False)
        _set(event, "metadata", metadata)
        _set(event, "method_func", method_func)
        _set(event, "method_name", method_name)
        _set(event, "deadline", deadline)
        _set(event, "content_type", content_type)
        _set(event, "user_agent", user_agent)
        _set(event, "peer", peer)
        for callback in self._listeners[RecvRequest]:
            await callback(event)
            if event.__interrupted__:
                break
        return event.metadata, event.method_func

    async def send_initial_metadata(self, metadata: Any) -> tuple[Any]:  # type: ignore[override]
        event = SendInitialMetadata.__new__(SendInitialMetadata)
        _set(event, "__interrupted__", False)
        _set(event, "metadata", metadata)
        for callback in self._listeners[SendInitialMetadata]:
            await callback(event)
            if event.__interrupted__:
                break
        return (event.metadata,)

    async def send_trailing_metadata(  # type: ignore[override]
        self,
        metadata: Any,
        *,
        status: Any,
        status_message: str | None,
        status_details: Any,
    ) -> tuple[Any]:
        event = SendTrailingMetadata.__new__(SendTrailingMetadata)
        _set(event, "__interrupted__", False)
        _set(event, "metadata", metadata)
        _set(event, "status", status)
        _set(event, "status_message", status_message)
        _set(event, "status_details", status_details)
        for callback in self._listeners[SendTrailingMetadata]:
            await callback(event)
            if event.__interrupted__:
                break
        return (event.metadata,)


class ServerStreamBase(grpclib.server.Stream):  # type: ignore[type-arg]
    """grpclib's server Stream with its private state under public names for our subclass."""

    @property
    def h2_stream(self) -> grpclib.protocol.Stream:
        return self._stream  # type: ignore[no-any-return]

    @property
    def method_name(self) -> str:
        return self._method_name  # type: ignore[no-any-return]

    @property
    def server_streaming(self) -> bool:
        return self._cardinality.server_streaming  # type: ignore[no-any-return]

    @property
    def client_streaming(self) -> bool:
        return self._cardinality.client_streaming  # type: ignore[no-any-return]

    @property
    def messages_received(self) -> int:
        return self._messages_received  # type: ignore[no-any-return]

    @property
    def recv_type(self) -> type:
        return self._recv_type  # type: ignore[no-any-return]

    @property
    def send_type(self) -> type:
        return self._send_type  # type: ignore[no-any-return]

    @property
    def codec(self) -> Any:
        return self._codec

    @property
    def events(self) -> Any:
        return self._dispatch

    @property
    def content_type(self) -> str:
        return self._content_type  # type: ignore[no-any-return]

    @property
    def initial_metadata_sent(self) -> bool:
        return self._send_initial_metadata_done  # type: ignore[no-any-return]

    @property
    def message_sent(self) -> bool:
        return self._send_message_done  # type: ignore[no-any-return]

    @property
    def trailing_metadata_sent(self) -> bool:
        return self._send_trailing_metadata_done  # type: ignore[no-any-return]

    @property
    def status_details_codec(self) -> Any:
        return self._status_details_codec

    def note_trailing_metadata_sent(self) -> None:
        self._send_trailing_metadata_done = True

    def note_initial_metadata_sent(self) -> None:
        self._send_initial_metadata_done = True

    def note_message_received(self) -> None:
        self._messages_received += 1

    def note_message_sent(self) -> None:
        self._send_message_done = True
        self._messages_sent += 1


class ServerHandlerBase(grpclib.server.Handler):
    """grpclib's per-connection Handler with its task table under public names."""

    @property
    def tasks(self) -> dict[Any, Any]:
        return self._tasks  # type: ignore[no-any-return]

    @property
    def cancelled_tasks(self) -> set[Any]:
        return self._cancelled  # type: ignore[no-any-return]

    def gc_step(self) -> None:
        self.__gc_step__()


class ServerBase(grpclib.server.Server):
    """grpclib's Server with the private state our protocol factory needs under public names,
    and its event dispatcher replaced by ``StackServerEvents`` (before any listener exists)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.__dispatch__ = StackServerEvents()

    @property
    def mapping(self) -> dict[str, Any]:
        return self._mapping  # type: ignore[no-any-return]

    @property
    def codec(self) -> Any:
        return self._codec

    @property
    def status_details_codec(self) -> Any:
        return self._status_details_codec

    @property
    def grpclib_config(self) -> Any:
        return self._config

    @property
    def h2_config(self) -> Any:
        return self._h2_config

    @property
    def handlers(self) -> set[Any]:
        return self._handlers  # type: ignore[no-any-return]

    @property
    def asyncio_server(self) -> Any:
        return self._server

    def gc_step(self) -> None:
        self.__gc_step__()

    def _protocol_factory(self) -> Any:
        return self.protocol_factory()

    def protocol_factory(self) -> Any:
        raise NotImplementedError


def server_dispatch(server: object) -> object:
    """grpclib's event dispatcher of a Server (where the middleware chain listens)."""
    return server.__dispatch__  # type: ignore[attr-defined]
