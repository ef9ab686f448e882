"""The client's own HTTP/2 connection: just what a gRPC client needs, in one asyncio Protocol.

h2 + hyperframe + grpclib's stream machinery were ~60% of the client's CPU per call (frame objects,
state machines, open-stream scans, events, several awaits per call). This speaks the frames
directly: a unary call is one transport write (HEADERS + DATA, batched with other calls of the
same loop turn, see write_soon) and one await (its response usually arrives in one read). HPACK
stays with the hpack library (request prefix and repeated response blocks cached, see _compat).

Covered: preface and SETTINGS, HEADERS/CONTINUATION, DATA with flow control both ways,
WINDOW_UPDATE, PING (acks, keepalive), RST_STREAM, GOAWAY (streams over its last id are refused:
never seen by the server, so retried transparently; a NO_ERROR GOAWAY lets the others finish),
MAX_CONCURRENT_STREAMS and write backpressure (waits), stream id exhaustion (as a GOAWAY).
"""

from __future__ import annotations

import asyncio
from typing import Any

from grpclib.const import Status

from .._compat import CachedHeaderDecoder, ClientHeaderEncoder
from .frames import (
    ACK,
    CONTINUATION,
    DATA,
    DEFAULT_WINDOW,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    GOAWAY_BODY,
    HEAD,
    HEADERS,
    MAX_STREAM_ID,
    PADDED,
    PING,
    PREFACE,
    PRIORITY_FLAG,
    PUSH_PROMISE,
    REFUSED_STREAM,
    RST_STATUS,
    RST_STREAM,
    SETTING,
    SETTINGS,
    U32,
    WINDOW_UPDATE,
    StreamError,
    frame,
)
from .stream import Stream

#: write_soon sends queued requests early once at least this many wait (see there)
EARLY_FLUSH_MIN = 8


class ClientConnection(asyncio.Protocol):
    """One HTTP/2 connection to a server, shared by every call to that target."""

    def __init__(
        self,
        *,
        stream_window: int = DEFAULT_WINDOW,
        connection_window: int = DEFAULT_WINDOW,
        keepalive_time: float | None = None,
        keepalive_timeout: float = 20.0,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: Any = None
        self.streams: dict[int, Stream] = {}
        self.next_id = 1
        self.encoder = ClientHeaderEncoder()
        self.decoder = CachedHeaderDecoder()
        self.stream_window = stream_window
        self.stream_window_half = max(1, stream_window // 2)
        self.connection_window = connection_window
        self.conn_to_ack = 0
        # the peer's limits
        self.send_window = DEFAULT_WINDOW
        self.peer_initial_window = DEFAULT_WINDOW
        self.max_frame_out = 16_384
        self.max_streams = 2**31
        self.keepalive_time = keepalive_time
        self.keepalive_timeout = keepalive_timeout
        self._keepalive: asyncio.TimerHandle | None = None
        self._ping_deadline: asyncio.TimerHandle | None = None
        #: keepalive PINGs the server answered
        self.pings_acked = 0
        self.goaway = False
        self.closed = False
        self.paused = False
        self.write_waiters: list[Stream] = []
        self.window_waiters: list[Stream] = []
        self.slot_waiters: list[Stream] = []
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._early_at = EARLY_FLUSH_MIN  # write_soon: queued requests that trigger a write
        self._open_at_read = 0  # streams open when the last read came in
        self._in = b""
        self._continued: tuple[int, int, list[bytes]] | None = None
        self.lost = self.loop.create_future()

    # --- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        settings = SETTING.pack(0x2, 0) + SETTING.pack(0x4, self.stream_window)  # no push
        out = [PREFACE, frame(SETTINGS, 0, 0, settings)]
        if self.connection_window > DEFAULT_WINDOW:
            inc = self.connection_window - DEFAULT_WINDOW
            out.append(frame(WINDOW_UPDATE, 0, 0, U32.pack(inc)))
        transport.write(b"".join(out))  # type: ignore[attr-defined]
        if self.keepalive_time:
            self._keepalive = self.loop.call_later(self.keepalive_time, self._ping)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        reason = f"Connection lost: {exc}" if exc else "Connection lost"
        self._fail_all(StreamError(Status.UNAVAILABLE, reason))
        for handle in (self._keepalive, self._ping_deadline):
            if handle is not None:
                handle.cancel()
        if not self.lost.done():
            self.lost.set_result(None)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._wake(self.write_waiters)

    def data_received(self, data: bytes) -> None:
        self._open_at_read = len(self.streams)
        buf = self._in + data if self._in else data
        size = len(buf)
        pos = 0
        unpack = HEAD.unpack_from
        try:
            while size - pos >= 9:
                hi, lo, ftype, flags, sid = unpack(buf, pos)
                end = pos + 9 + (hi << 8 | lo)
                if end > size:
                    break
                payload = buf[pos + 9 : end]
                pos = end
                if self._continued is not None and ftype != CONTINUATION:
                    raise ConnectionError("expected CONTINUATION")
                if ftype == DATA:
                    self._on_data(sid & MAX_STREAM_ID, flags, payload)
                elif ftype == HEADERS:
                    self._on_headers(sid & MAX_STREAM_ID, flags, payload)
                else:
                    self._on_control(ftype, flags, sid & MAX_STREAM_ID, payload)
        except Exception as exc:  # a malformed frame, HPACK error, PUSH_PROMISE ...
            self.abort(f"protocol error: {exc}")
            return
        self._in = buf[pos:]
        self.flush()

    # --- frames in ------------------------------------------------------------------------

    def _on_data(self, sid: int, flags: int, payload: bytes) -> None:
        n = len(payload)
        if flags & PADDED:
            payload = payload[1 : n - payload[0]]
        self.conn_to_ack += n
        if self.conn_to_ack >= self.connection_window // 2:
            self.queue(frame(WINDOW_UPDATE, 0, 0, U32.pack(self.conn_to_ack)))
            self.conn_to_ack = 0
        stream = self.streams.get(sid)
        if stream is None or stream.recv_closed:
            return
        stream.buffer += payload
        if stream.reading:
            stream.accept(n)
        else:
            stream.held += n
        if flags & END_STREAM:
            self._end_remote(stream)
        else:
            stream.wake()

    def _on_headers(self, sid: int, flags: int, payload: bytes) -> None:
        if flags & PADDED:
            payload = payload[1 : len(payload) - payload[0]]
        if flags & PRIORITY_FLAG:
            payload = payload[5:]
        if not flags & END_HEADERS:
            self._continued = (sid, flags, [payload])
            return
        self._headers_done(sid, flags, payload)

    def _headers_done(self, sid: int, flags: int, block: bytes) -> None:
        headers = self.decoder.decode(block)  # always: the HPACK state is per connection
        stream = self.streams.get(sid)
        if stream is None or stream.recv_closed:
            return
        if stream.headers is None:
            if headers and headers[0][1][:1] == "1" and headers[0][0] == ":status":
                return  # informational (1xx): the real headers follow
            stream.headers = headers
        else:
            stream.trailers = headers
        if flags & END_STREAM:
            self._end_remote(stream)
        else:
            stream.wake()

    def _end_remote(self, stream: Stream) -> None:
        stream.recv_closed = True
        if stream.local_closed:
            self.remove(stream)
        stream.wake()

    def _on_control(self, ftype: int, flags: int, sid: int, payload: bytes) -> None:
        if ftype == CONTINUATION:
            if self._continued is None or self._continued[0] != sid:
                raise ConnectionError("unexpected CONTINUATION")
            self._continued[2].append(payload)
            if flags & END_HEADERS:
                csid, cflags, parts = self._continued
                self._continued = None
                self._headers_done(csid, cflags, b"".join(parts))
        elif ftype == SETTINGS:
            if not flags & ACK:
                for i in range(0, len(payload) - 5, 6):
                    self._setting(*SETTING.unpack_from(payload, i))
                self.queue(frame(SETTINGS, ACK, 0))
        elif ftype == WINDOW_UPDATE:
            inc = U32.unpack(payload)[0] & MAX_STREAM_ID
            if sid == 0:
                self.send_window += inc
            elif (stream := self.streams.get(sid)) is not None:
                stream.send_window += inc
            self._wake(self.window_waiters)
        elif ftype == PING:
            if flags & ACK:
                self.pings_acked += 1
                if self._ping_deadline is not None:
                    self._ping_deadline.cancel()
                    self._ping_deadline = None
            else:
                self.queue(frame(PING, ACK, 0, payload))
        elif ftype == RST_STREAM:
            stream = self.streams.get(sid)
            if stream is not None and stream.recv_closed:
                stream.local_closed = True  # the response is complete: stop sending, no error
                self.remove(stream)
            elif stream is not None:
                code = U32.unpack(payload)[0]
                status = RST_STATUS.get(code, Status.INTERNAL)
                stream.fail(
                    StreamError(
                        status,
                        f"Stream reset by the server (error code {code})",
                        refused=code == REFUSED_STREAM,
                    )
                )
                stream.local_closed = stream.recv_closed = True
                self.remove(stream)
        elif ftype == GOAWAY:
            last, code = GOAWAY_BODY.unpack_from(payload)
            self._on_goaway(last & MAX_STREAM_ID, code)
        elif ftype == PUSH_PROMISE:
            raise ConnectionError("PUSH_PROMISE with push disabled")
        # PRIORITY and unknown types: ignored (RFC 9113 5.5)

    def _setting(self, key: int, value: int) -> None:
        if key == 0x1:
            self.encoder.header_table_size = value
        elif key == 0x3:
            self.max_streams = value
            self._wake(self.slot_waiters)
        elif key == 0x4:
            delta = value - self.peer_initial_window
            self.peer_initial_window = value
            for stream in self.streams.values():
                stream.send_window += delta
            self._wake(self.window_waiters)
        elif key == 0x5:
            self.max_frame_out = value

    def _on_goaway(self, last: int, code: int) -> None:
        self.goaway = True
        refused = StreamError(
            Status.UNAVAILABLE, "Stream refused by the server (GOAWAY)", refused=True
        )
        for stream in [s for i, s in self.streams.items() if i > last]:
            stream.fail(refused)
            stream.local_closed = stream.recv_closed = True
            self.remove(stream)
        self._wake(self.slot_waiters)
        if code != 0:
            self._fail_all(StreamError(Status.UNAVAILABLE, f"Connection lost: GOAWAY {code}"))
            self.close()
        elif not self.streams:
            self.close()

    # --- frames out -----------------------------------------------------------------------

    def queue(self, data: bytes) -> None:
        """Send with the next flush (end of this read, or of this loop turn)."""
        self._out.append(data)

    def write(self, data: bytes) -> None:
        if self._out:
            self._out.append(data)
            self.flush()
        elif not self.closed:
            self.transport.write(data)

    def write_soon(self, data: bytes) -> None:
        """Send with the flush at the end of this loop turn, or as soon as half as many requests
        as were in flight at the last read (at least EARLY_FLUSH_MIN) are waiting.

        A read that completes a whole burst of calls wakes their tasks, whose next calls all
        come out in the following turn. Sent in one write, the server sat idle while the client
        made them (~10% of its time at 100 in flight: client and server took turns). Sent in two
        halves, the server works on the first while the client makes the second, and the two
        batches then stay out of step; written in smaller pieces (1, 2, 4, ...) the server idled
        as little but read and wrote more often, which cost it more per call."""
        out = self._out
        out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._early_at = max(EARLY_FLUSH_MIN, self._open_at_read // 2)
            self.loop.call_soon(self.flush)
        if len(out) >= self._early_at:
            self._send_out()

    def flush(self) -> None:
        self._flush_scheduled = False
        if self._out:
            self._send_out()

    def _send_out(self) -> None:
        out = self._out
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        if not self.closed and not self.transport.is_closing():
            self.transport.write(data)

    # --- streams --------------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        return not self.goaway and not self.closed

    def new_stream(self) -> Stream:
        return Stream(self)

    async def open(
        self,
        stream: Stream,
        prefix: tuple[tuple[bytes, bytes], ...],
        rest: list[tuple[bytes, bytes]],
        data: bytes | None,
        end: bool,
    ) -> None:
        """Send ``stream``'s headers and (when it fits the windows) its first message, as one
        write; waits for a free stream slot and for a writable transport."""
        while len(self.streams) >= self.max_streams or self.paused:
            if self.goaway or self.closed:
                break
            (self.write_waiters if self.paused else self.slot_waiters).append(stream)
            await stream.wait()
        if self.goaway or self.closed or self.next_id > MAX_STREAM_ID:
            self.goaway = True
            raise StreamError(Status.UNAVAILABLE, "Connection is going away", refused=True)
        sid = stream.id = self.next_id
        self.next_id += 2
        stream.send_window = self.peer_initial_window
        self.streams[sid] = stream
        block = self.encoder.encode_request(prefix, rest)
        max_frame = self.max_frame_out
        end_now = end and data is None
        flags = END_STREAM if end_now else 0
        if len(block) <= max_frame:
            out = [frame(HEADERS, flags | END_HEADERS, sid, block)]
        else:
            out = [frame(HEADERS, flags, sid, block[:max_frame])]
            for i in range(max_frame, len(block), max_frame):
                last = i + max_frame >= len(block)
                piece = block[i : i + max_frame]
                out.append(frame(CONTINUATION, END_HEADERS if last else 0, sid, piece))
        pending = None
        if data is not None:
            n = len(data)
            if n <= self.send_window and n <= stream.send_window and n <= max_frame:
                out.append(frame(DATA, END_STREAM if end else 0, sid, data))
                self.send_window -= n
                stream.send_window -= n
            else:
                pending = data
        elif end:
            stream.local_closed = True
        if pending is None and end:
            stream.local_closed = True
        payload = b"".join(out)
        if len(self.streams) > 1:
            self.write_soon(payload)  # other calls in flight: batched with this turn's others
        else:
            self.write(payload)
        if pending is not None:
            await stream.send_data(pending, end)

    def remove(self, stream: Stream) -> None:
        if self.streams.pop(stream.id, None) is not None:
            if self.slot_waiters:
                self._wake(self.slot_waiters)
            if self.goaway and not self.streams:
                self.close()

    @staticmethod
    def _wake(waiters: list[Stream]) -> None:
        if waiters:
            woken = waiters[:]
            waiters.clear()
            for stream in woken:
                stream.wake()

    def _fail_all(self, exc: StreamError) -> None:
        streams = list(self.streams.values())
        self.streams.clear()
        for stream in streams:
            stream.fail(exc)
        # a call still waiting for a stream slot never reached the server: retried transparently
        unsent = StreamError(exc.status, exc.message, refused=True)
        for waiters in (self.slot_waiters, self.window_waiters, self.write_waiters):
            for stream in waiters:
                stream.fail(unsent if stream.id == 0 else exc)
            waiters.clear()

    # --- keepalive, closing ---------------------------------------------------------------

    def _ping(self) -> None:
        if self.closed or self.keepalive_time is None:
            return
        if self.streams and self._ping_deadline is None:
            self.queue(frame(PING, 0, 0, b"\0" * 8))
            self.flush()
            self._ping_deadline = self.loop.call_later(
                self.keepalive_timeout, self.abort, "keepalive PING not answered"
            )
        self._keepalive = self.loop.call_later(self.keepalive_time, self._ping)

    def abort(self, reason: str) -> None:
        self._fail_all(StreamError(Status.UNAVAILABLE, f"Connection lost: {reason}"))
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        """Close now; streams still open fail with UNAVAILABLE."""
        if self.transport is not None and not self.transport.is_closing():
            self.flush()
            self.transport.close()
