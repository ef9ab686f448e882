"""Every access grpcstack makes to a private part of grpclib or h2 lives in this module.

grpclib 0.4.9 (pinned in pyproject.toml) lacks what a production server and client need, so the
stack replaces a few of its private pieces. Keeping every such access here means a grpclib or h2
upgrade is checked in one place; ``tests/test_transport.py`` fails loudly when one moves.

Sections: server side (protocol, handler, stream), client side (channel, protocol, stream).
"""

from __future__ import annotations

GRPCLIB_VERSION = "0.4.9"

# --- server side --------------------------------------------------------------------------

# --- client side --------------------------------------------------------------------------
# grpclib's client closes every stream of a connection on GOAWAY (also the ones the server is still
# answering) and does not tell a refused stream from any other reset. The client protocol below
# keeps streams at or under the GOAWAY's last stream id running to their end and marks the others
# (and RST_STREAM(REFUSED_STREAM)) as refused: never seen by the server, so safe to retry anywhere.

import asyncio as _asyncio  # noqa: E402
from collections.abc import Callable as _Callable  # noqa: E402
from typing import Any as _Any  # noqa: E402

from grpclib.client import Channel as _GrpclibChannel  # noqa: E402
from grpclib.client import Handler as _ClientHandler  # noqa: E402
from grpclib.protocol import EventsProcessor as _EventsProcessor  # noqa: E402
from grpclib.protocol import H2Protocol as _H2Protocol  # noqa: E402
from grpclib.protocol import Stream as H2Stream  # noqa: E402
from grpclib.utils import Wrapper  # noqa: E402
from h2.connection import ConnectionState as _ConnectionState  # noqa: E402
from h2.errors import ErrorCodes as _ErrorCodes  # noqa: E402
from h2.events import ConnectionTerminated as _ConnectionTerminated  # noqa: E402
from h2.events import StreamReset as _StreamReset  # noqa: E402
from hpack.hpack import INDEX_NEVER as _INDEX_NEVER  # noqa: E402
from hpack.hpack import INDEX_NONE as _INDEX_NONE  # noqa: E402
from hpack.hpack import Encoder as _HpackEncoder  # noqa: E402
from hyperframe.frame import GoAwayFrame as _GoAwayFrame  # noqa: E402

REFUSED_REASON = "refused"


class ClientEventsProcessor(_EventsProcessor):
    """Per-connection h2 event dispatch with GOAWAY handled as gRPC clients must."""

    #: a GOAWAY arrived: no new streams on this connection
    goaway = False

    def process_stream_reset(self, event: _StreamReset) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None and event.error_code == _ErrorCodes.REFUSED_STREAM:
            stream.refused = True  # type: ignore[attr-defined]
        super().process_stream_reset(event)

    def process_connection_terminated(self, event: _ConnectionTerminated) -> None:
        self.goaway = True
        last = event.last_stream_id if event.last_stream_id is not None else 2**31 - 1
        for stream_id, stream in list(self.streams.items()):
            if stream_id > last:
                stream.refused = True  # type: ignore[attr-defined]
                stream.__terminated__(REFUSED_REASON)
        remaining = [s for i, s in self.streams.items() if i <= last]
        if event.error_code != _ErrorCodes.NO_ERROR or not remaining:
            super().process_connection_terminated(event)

    def register(self, stream: H2Stream) -> _Callable[[], None]:
        release = super().register(stream)

        def release_stream() -> None:
            release()
            if self.goaway and not self.streams:
                self.close("Received GOAWAY frame, all streams done")

        return release_stream


class ClientHeaderEncoder(_HpackEncoder):
    """HPACK for request headers with the per-method prefix cached.

    A request's leading headers (:method ... grpc-accept-encoding) are the same for every call of
    a method to a target: their encoding is reused while the dynamic table is unchanged, and the
    per-call rest (grpc-timeout, metadata) is sent as literals that never enter the table, so the
    table stops changing after the first call of each method (h2's pure-Python HPACK is about
    half of the client's cost of sending a request).
    """

    def __init__(self) -> None:
        super().__init__()
        #: how many leading headers of the next ``encode`` are the cacheable prefix
        self.prefix_len = 0
        self._cache: dict[tuple[tuple[bytes, bytes], ...], tuple[int, bytes]] = {}
        self._version = 0

    def _table_state(self) -> tuple[int, int, object]:
        table = self.header_table
        entries = table.dynamic_entries
        return (table._current_size, len(entries), entries[0] if entries else None)

    def encode(self, headers: _Any, huffman: bool = True) -> bytes:
        n, self.prefix_len = self.prefix_len, 0
        before = self._table_state()
        if not n or self.header_table.resized:
            encoded = super().encode(headers, huffman)
            if self._table_state() != before:
                self._version += 1
            return encoded  # type: ignore[no-any-return]
        key = tuple(headers[:n])
        cached = self._cache.get(key)
        if cached is not None and cached[0] == self._version:
            block = cached[1]
        else:
            block = super().encode(key, huffman)
            if self._table_state() != before:
                self._version += 1
            self._cache[key] = (self._version, block)
        if len(headers) == n:
            return block
        literal = self._encode_literal
        parts = [block]
        for name, value in headers[n:]:
            never = name == b"authorization" or name.endswith(b"-bin")
            parts.append(literal(name, value, _INDEX_NEVER if never else _INDEX_NONE, False))
        return b"".join(parts)


class BatchingTransport:
    """Transport proxy: requests opened while other calls are in flight are written together once
    per loop iteration (one send for many calls); everything else is written at once, after any
    batched bytes, so frames keep their order."""

    __slots__ = ("_buffer", "_loop", "_transport")

    def __init__(self, transport: _Any, loop: _asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._buffer: list[bytes] = []

    def write(self, data: bytes) -> None:
        if self._buffer:
            self._buffer.append(data)
        else:
            self._transport.write(data)

    def write_soon(self, data: bytes) -> None:
        if not self._buffer:
            self._loop.call_soon(self.flush)
        self._buffer.append(data)

    def flush(self) -> None:
        if self._buffer:
            data = b"".join(self._buffer)
            self._buffer.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> _Any:  # is_closing, get_extra_info, abort ...
        return getattr(self._transport, name)


class ClientProtocol(_H2Protocol):
    def connection_made(self, transport: _asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.processor = ClientEventsProcessor(self.handler, self.connection)
        self.connection._transport = BatchingTransport(transport, _asyncio.get_running_loop())
        h2 = self.connection._connection
        h2.encoder = ClientHeaderEncoder()  # no headers were encoded yet on this connection
        receive_goaway = h2._frame_dispatch_table[_GoAwayFrame]

        def graceful_goaway(frame: _GoAwayFrame) -> _Any:
            # h2 moves to CLOSED on any GOAWAY and then rejects the frames of the streams the
            # server still answers (often in the same read); a NO_ERROR GOAWAY lets them finish.
            result = receive_goaway(frame)
            if frame.error_code == 0:
                h2.state_machine.state = _ConnectionState.CLIENT_OPEN
            return result

        h2._frame_dispatch_table[_GoAwayFrame] = graceful_goaway


class StackChannelBase(_GrpclibChannel):
    """grpclib's Channel with :class:`ClientProtocol` connections."""

    def _protocol_factory(self) -> _H2Protocol:
        return ClientProtocol(_ClientHandler(), self._config, self._h2_config)

    def connected_protocol(self) -> ClientProtocol | None:
        """The open, usable connection, if any (no GOAWAY received, not lost)."""
        protocol = self._protocol
        if protocol is None or protocol.handler.connection_lost:
            return None
        processor = protocol.processor
        if getattr(processor, "goaway", False):
            return None
        return protocol  # type: ignore[return-value]

    async def connect(self) -> ClientProtocol:
        if self._protocol is not None and getattr(self._protocol.processor, "goaway", False):
            self._protocol = None  # the old connection closes itself once drained
        return await self.__connect__()  # type: ignore[return-value]

    @property
    def authority(self) -> str:
        return self._authority  # type: ignore[no-any-return]

    @property
    def scheme(self) -> str:
        return self._scheme  # type: ignore[no-any-return]

    def drop_connection(self) -> None:
        """Close the connection now (failing its streams)."""
        if self._protocol is not None:
            self._protocol.processor.close("Channel closed")
            self._protocol = None


def open_stream(
    protocol: ClientProtocol,
    wrapper: Wrapper,
    headers: list[tuple[bytes, bytes]],
    data: bytes | None,
    end: bool,
    prefix_len: int = 0,
) -> tuple[H2Stream, _Callable[[], None]] | None:
    """Open a stream and send its headers and (if it fits the windows) its first data in ONE
    transport write; None when no stream can be opened right now (too many streams, paused).
    The first ``prefix_len`` headers are the same for every call of the method (cached HPACK)."""
    connection = protocol.processor.connection
    if not connection.write_ready.is_set():
        return None
    h2 = connection._connection
    if h2.open_outbound_streams >= h2.remote_settings.max_concurrent_streams:
        return None
    stream = connection.create_stream(wrapper=wrapper)
    stream_id = h2.get_next_available_stream_id()
    stream.refused = False  # type: ignore[attr-defined]
    # a new stream's window is the peer's initial window; the connection's may be smaller
    fits = data is not None and len(data) <= min(
        h2.outbound_flow_control_window,
        h2.max_outbound_frame_size,
        h2.remote_settings.initial_window_size,
    )
    encoder = h2.encoder
    if isinstance(encoder, ClientHeaderEncoder):
        encoder.prefix_len = prefix_len
    h2.send_headers(stream_id, headers, end_stream=end and data is None)
    stream.init_stream(stream_id, connection)
    release = protocol.processor.register(stream)
    if fits:
        assert data is not None
        h2.send_data(stream_id, data, end_stream=end)
        stream.data_sent += len(data)
        connection.data_sent += len(data)
    out = connection._transport
    if len(protocol.processor.streams) > 1 and isinstance(out, BatchingTransport):
        out.write_soon(h2.data_to_send())  # other calls in flight: batch with their requests
    else:
        out.write(h2.data_to_send())
    connection.headers_send_process()
    if data is not None and not fits:
        stream._grpcstack_pending = data  # type: ignore[attr-defined]
    return stream, release


def is_refused(stream: H2Stream) -> bool:
    return bool(getattr(stream, "refused", False))


def transport_closing(stream: H2Stream) -> bool:
    return bool(stream._transport.is_closing())


async def wait_for_stream_slot(protocol: ClientProtocol) -> None:
    """Wait until ``open_stream`` may succeed: the transport takes writes again, or (at the
    peer's MAX_CONCURRENT_STREAMS) one of the connection's streams closed."""
    connection = protocol.processor.connection
    if not connection.write_ready.is_set():
        await connection.write_ready.wait()
    else:
        connection.stream_close_waiter.clear()
        await connection.stream_close_waiter.wait()
