"""One call's HTTP/2 stream on a client connection: its receive buffer and flow-control credit,
its send window, and the one future its call's task waits on."""

from __future__ import annotations

import asyncio
from typing import Protocol

from grpclib.const import Status

from .frames import CANCEL, DATA, END_STREAM, RST_STREAM, U32, WINDOW_UPDATE, StreamError, frame


class StreamOwner(Protocol):
    """What a stream uses of its connection (grpcstack.client.connection.ClientConnection)."""

    loop: asyncio.AbstractEventLoop
    streams: dict[int, Stream]
    stream_window_half: int
    send_window: int
    max_frame_out: int
    paused: bool
    closed: bool
    write_waiters: list[Stream]
    window_waiters: list[Stream]

    def queue(self, data: bytes) -> None: ...

    def write(self, data: bytes) -> None: ...

    def flush(self) -> None: ...

    def remove(self, stream: Stream) -> None: ...


class Stream:
    """One request/response exchange. The reading side is one task (the call's)."""

    __slots__ = (
        "_waiter",
        "buffer",
        "conn",
        "error",
        "headers",
        "held",
        "id",
        "local_closed",
        "reading",
        "recv_closed",
        "send_window",
        "to_ack",
        "trailers",
    )

    def __init__(self, conn: StreamOwner) -> None:
        self.conn = conn
        self.id = 0
        self.headers: list[tuple[str, str]] | None = None
        self.trailers: list[tuple[str, str]] | None = None
        self.buffer = bytearray()
        self.error: BaseException | None = None
        self.local_closed = False
        self.recv_closed = False
        self.send_window = 0
        self.held = 0  # received while nobody waited for it: acked once a read needs more
        self.to_ack = 0
        self.reading = False
        self._waiter: asyncio.Future[None] | None = None

    # --- waiting --------------------------------------------------------------------------

    async def wait(self) -> None:
        """Until woken (data, headers, window, a slot, an error); raises the stream's error."""
        if self.error is not None:
            raise self.error
        fut = self._waiter = self.conn.loop.create_future()
        try:
            await fut
        finally:
            self._waiter = None
        if self.error is not None:
            raise self.error

    def wake(self) -> None:
        fut = self._waiter
        if fut is not None and not fut.done():
            fut.set_result(None)

    def fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self.wake()

    # --- receiving ------------------------------------------------------------------------

    async def recv_headers(self) -> list[tuple[str, str]]:
        while self.headers is None:
            if self.error is not None:
                raise self.error
            if self.recv_closed:
                raise StreamError(Status.INTERNAL, "Stream ended without response headers")
            await self.wait()
        return self.headers

    async def read(self, n: int) -> bytes:
        """Exactly ``n`` bytes of the response body, or fewer at its end."""
        buffer = self.buffer
        while len(buffer) < n and not self.recv_closed:
            if self.held:  # the peer may be waiting for window to send the rest
                self.accept(self.held)
                self.held = 0
                self.conn.flush()
            self.reading = True
            try:
                await self.wait()
            finally:
                self.reading = False
        if self.error is not None and len(buffer) < n:
            raise self.error
        data = bytes(buffer[:n])
        del buffer[:n]
        return data

    async def recv_trailers(self) -> list[tuple[str, str]] | None:
        while not self.recv_closed:
            await self.wait()
        if self.trailers is None and self.error is not None:
            raise self.error
        return self.trailers

    def accept(self, n: int) -> None:
        """The reader takes ``n`` more received bytes: the peer may send that much again."""
        self.to_ack += n
        if self.to_ack >= self.conn.stream_window_half and not self.recv_closed:
            self.conn.queue(frame(WINDOW_UPDATE, 0, self.id, U32.pack(self.to_ack)))
            self.to_ack = 0

    # --- sending --------------------------------------------------------------------------

    async def send_data(self, data: bytes, end: bool) -> None:
        conn = self.conn
        if self.local_closed and self.error is None:
            return  # the server ended the exchange (RST_STREAM after its trailers)
        while True:
            if self.error is not None:
                raise self.error
            if conn.paused:
                conn.write_waiters.append(self)
                await self.wait()
                continue
            room = min(conn.send_window, self.send_window, conn.max_frame_out)
            if room <= 0 and data:
                conn.window_waiters.append(self)
                await self.wait()
                continue
            chunk, data = data[:room], data[room:]
            last = end and not data
            conn.send_window -= len(chunk)
            self.send_window -= len(chunk)
            conn.write(frame(DATA, END_STREAM if last else 0, self.id, chunk))
            if not data:
                break
        if end:
            self.local_closed = True
            if self.recv_closed:
                conn.remove(self)

    @property
    def closable(self) -> bool:
        return self.id != 0 and (not self.local_closed or not self.recv_closed)

    def close(self) -> None:
        """Reset the stream if it is still open, and forget it."""
        conn = self.conn
        if self.id in conn.streams and not conn.closed:
            conn.queue(frame(RST_STREAM, 0, self.id, U32.pack(CANCEL)))
            conn.flush()
        self.local_closed = self.recv_closed = True
        conn.remove(self)
