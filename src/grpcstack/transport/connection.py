"""One HTTP/2 connection: SETTINGS, write coalescing, per-connection limits and GOAWAY.

Everything here runs synchronously in ``data_received``, before any request task exists, so a
hostile peer is refused at the cost of parsing its frames, never of running a call:

* a stream beyond MAX_CONCURRENT_STREAMS, or opened after our final GOAWAY, gets
  RST_STREAM(REFUSED_STREAM) and the connection lives on (RFC 9113 5.1.2; clients retry those);
* a stream reset in the same read that opened it is never dispatched; client resets are capped
  per interval, then GOAWAY(ENHANCE_YOUR_CALM) (the rapid-reset attack, CVE-2023-44487);
* oversized or non-ASCII request headers are answered on their own stream;
* client pings are policed like grpc-go's keepalive enforcement;
* every close the server initiates is preceded by a GOAWAY, and a drain is grpc-go's
  GracefulStop: GOAWAY(2^31-1) + PING, then GOAWAY(last stream) once the PING is acked;
* a drained connection is closed only once the peer has read its last answers: a PING written
  behind them and its ack prove that (a peer parses frames in order).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from typing import Any, cast

import grpclib.protocol
from grpclib.metadata import encode_grpc_message
from grpclib.protocol import EventsProcessor, Peer
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    PingAckReceived,
    PingReceived,
    RequestReceived,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes, Settings
from hyperframe.frame import GoAwayFrame, PingFrame

from .._compat import (
    CappedDecoder,
    ServerH2Connection,
    ServerH2Stream,
    StackEncoder,
    drop_buffered,
    lift_inbound_stream_limit,
    set_nodelay,
    take_unacked,
)
from .head import HeadCache
from .policy import ENHANCE_YOUR_CALM, NO_ERROR, ConnectionPolicy, Listener, TransportObserver

log = logging.getLogger("grpcstack.transport")

_DRAIN_PING = b"grpcstkd"
#: written behind a drained connection's last answers: its ack says the peer has parsed them
_CLOSE_PING = b"grpcstkc"
LINGER_SECONDS = 1.0
_FEED_SLICE = 16 * 1024
#: user-agent parts of clients that keep the streams a GOAWAY covers (gRPC's own stacks)
_RIDES_GOAWAY = (
    b"grpc-c/",
    b"grpc-go/",
    b"grpc-java",
    b"grpc-node-js/",
    b"grpc-dotnet/",
    b"grpc-swift",
    b"connect-go/",
    b"grpcstack-client",
)
_RIDES_GOAWAY_SEEN: dict[bytes, bool] = {}


def _rides_goaway(user_agent: bytes) -> bool:
    # a client sends the same user-agent on every call: match its parts once
    known = _RIDES_GOAWAY_SEEN.get(user_agent)
    if known is None:
        if len(_RIDES_GOAWAY_SEEN) >= 256:
            _RIDES_GOAWAY_SEEN.clear()
        known = _RIDES_GOAWAY_SEEN[user_agent] = any(a in user_agent for a in _RIDES_GOAWAY)
    return known


_MAX_STREAM_ID = 2**31 - 1
#: hpack must decode a whole header block to stay in sync; beyond this the connection goes
_HARD_HEADER_CAP_FACTOR = 4


class CoalescingTransport:
    """Buffers grpclib's writes and hands them to the real transport in one ``write``.

    A flush is queued with ``call_soon``: behind the request tasks a read just created, so the
    frames they produce in their first step go out together.
    """

    __slots__ = ("_buf", "_closed", "_loop", "_peername", "_scheduled", "_transport", "linger")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._buf: list[bytes] = []
        self._scheduled = False
        #: close with FIN and read on for a while: closing with unread input sends a TCP RST,
        #: and the peer may then never read the GOAWAY that says why
        self.linger = False
        self._closed = False
        self._peername: Any = transport.get_extra_info("peername")

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        # the peer's address is read for every call (its context, the access log): once here
        if name == "peername" and self._peername is not None:
            return self._peername
        return self._transport.get_extra_info(name, default)

    def is_closing(self) -> bool:
        # closed by us: a half-closed (write_eof) transport still says False, and a write to it
        # raises from the flush callback; grpclib skips trailers and acks when this is True
        return self._closed or self._transport.is_closing()

    def write(self, data: bytes) -> None:
        if data and not self._closed:
            self._buf.append(data)
            if not self._scheduled:
                self._scheduled = True
                self._loop.call_soon(self.flush)

    def hold(self) -> None:
        """Writes until the next ``call_soon`` flush wait for the frames handlers produce."""
        self._scheduled = True
        self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        buf = self._buf
        if buf:
            self._buf = []
            if not self._closed and not self._transport.is_closing():
                self._transport.write(buf[0] if len(buf) == 1 else b"".join(buf))

    def close(self) -> None:
        if self._closed:
            return
        self.flush()
        self._closed = True
        transport = self._transport
        if self.linger and not transport.is_closing() and transport.can_write_eof():
            transport.write_eof()
            self._loop.call_later(LINGER_SECONDS, transport.close)
        else:
            transport.close()

    def __getattr__(self, name: str) -> Any:  # is_closing, get_extra_info, abort ...
        return getattr(self._transport, name)


class StackConnection(grpclib.protocol.Connection):
    """grpclib's Connection that says GOAWAY before it closes and resets ping strikes when the
    server sends headers or data (grpc-go does the same: pings answered by traffic are fine)."""

    def __init__(self, h2_conn: H2Connection, transport: Any, *, config: Any, owner: Any) -> None:
        super().__init__(h2_conn, transport, config=config)
        self.owner: StackProtocol = owner
        self._peer: Peer | None = None

    def get_peer(self) -> Peer:
        # every call's Stream asks: one Peer per connection (it only wraps the transport)
        peer = self._peer
        if peer is None:
            peer = self._peer = super().get_peer()
        return peer

    def headers_send_process(self) -> None:
        super().headers_send_process()
        self.owner.ping_strikes = 0

    def data_send_process(self) -> None:
        super().data_send_process()
        self.owner.ping_strikes = 0

    def close(self) -> None:
        if not self.is_closing():
            self.owner.send_goaway(NO_ERROR, "close", final=True)
        super().close()


class StackProtocol(asyncio.Protocol):
    """The server side of one connection (replaces grpclib's H2Protocol)."""

    connection: StackConnection
    processor: EventsProcessor

    def __init__(self, server: Listener, handler: Any) -> None:
        self.server = server
        self.handler = handler
        self.policy: ConnectionPolicy = server.policy
        self.observer: TransportObserver = server.observer
        self.ping_strikes = 0
        self._last_ping = -1e18
        self._resets = 0
        self._reset_window_start = 0.0
        #: streams above this id are refused: set by our final GOAWAY
        self.last_stream_id: int | None = None
        # 0 serving, -1 draining at the next idle moment, 1 drain PING sent, 2 final GOAWAY sent,
        # 3 idle after the final GOAWAY: closing once the close PING is acked
        self._drain_state = 0
        self._drain_reason = "drain"
        self._ping_sent_at = 0.0
        #: calls answered, and how many were when the last PING was written: a PING's ack
        #: covers every answer written before it
        self._answered = 0
        self._answered_at_ping = 0
        #: a draining connection that found no quiet moment: new streams are refused
        self._refusing = False
        #: the peer is a client known to keep the streams a GOAWAY covers (grpc-core, grpc-go,
        #: grpc-java, grpc-js, grpcstack's Client); others (python-h2: grpclib, httpx, ...) end
        #: every call on any GOAWAY and refuse any frame after one
        self.rides_goaway = False
        self._timers: list[asyncio.TimerHandle] = []
        self._last_active = time.monotonic()
        self.open = False
        #: bytes of request messages being assembled, and reads waiting for room
        self.pending_bytes = 0
        self._room: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._heads = HeadCache()

    # --- life cycle ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        loop = asyncio.get_running_loop()
        self.loop = loop
        sock = transport.get_extra_info("socket")
        if sock is not None:
            set_nodelay(sock)
        self._proxy = CoalescingTransport(cast(asyncio.Transport, transport), loop)
        config = self.server.grpclib_config
        policy = self.policy

        h2_conn = ServerH2Connection(config=self.server.stack_h2_config)
        h2_conn.encoder = StackEncoder()
        h2_conn.decoder = CappedDecoder(
            max(policy.max_header_list_size * _HARD_HEADER_CAP_FACTOR, 64 * 1024)
        )
        # Values in force from the first SETTINGS frame on, not after a second round trip.
        h2_conn.local_settings = Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: policy.max_concurrent_streams,
                SettingCodes.INITIAL_WINDOW_SIZE: config.http2_stream_window_size,
                SettingCodes.MAX_HEADER_LIST_SIZE: policy.max_header_list_size,
            },
        )
        h2_conn.initiate_connection()
        lift_inbound_stream_limit(h2_conn)
        conn_delta = config.http2_connection_window_size - 65535
        if conn_delta > 0:
            h2_conn.increment_flow_control_window(conn_delta)
        self.h2 = h2_conn

        self.connection = StackConnection(h2_conn, self._proxy, config=config, owner=self)
        self.connection.flush()
        self.connection.initialize()
        self.processor = EventsProcessor(self.handler, self.connection)
        self.open = True
        self.server.protocols.add(self)
        self.observer.connection_opened()

        if policy.max_connections and len(self.server.protocols) > policy.max_connections:
            log.warning("connection limit %d reached: refusing one", policy.max_connections)
            self.send_goaway(ENHANCE_YOUR_CALM, "max_connections", final=True)
            self.close_now()
            return
        if policy.max_connection_age < float("inf"):
            age = policy.max_connection_age * random.uniform(0.9, 1.1)
            self._timers.append(loop.call_later(age, self._age_reached))
        if policy.max_connection_idle < float("inf"):
            self._timers.append(loop.call_later(policy.max_connection_idle, self._idle_check))

    def connection_lost(self, exc: BaseException | None) -> None:
        self.server.linger_done(self)
        self._shutdown("Connection lost")

    def _shutdown(self, reason: str) -> None:
        if not self.open:
            return
        self.open = False
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        streams = list(self.processor.streams.values())
        self.processor.close(reason=reason)
        for stream in streams:
            drop_buffered(stream)
        for _, fut in self._room:
            if not fut.done():
                fut.cancel()
        self._room.clear()
        self.server.protocols.discard(self)
        self.server.forget_handler(self.handler)
        self.observer.connection_closed()

    def pause_writing(self) -> None:
        self.connection.pause_writing()

    def resume_writing(self) -> None:
        self.connection.resume_writing()

    # --- reading -------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if len(data) <= _FEED_SLICE:
            self._receive(data)
            return
        # h2 parses a whole read before we see its first event: feed a large read in slices
        # so that a connection we gave up on costs at most one slice more
        view = memoryview(data)
        for start in range(0, len(data), _FEED_SLICE):
            if not self.open:
                return
            self._receive(bytes(view[start : start + _FEED_SLICE]))

    def _receive(self, data: bytes) -> None:
        if not self.open:
            return
        self._proxy.hold()  # control frames written now wait for the handlers' frames
        try:
            events = self.connection.feed(data)
        except ProtocolError as exc:
            # h2 queued a GOAWAY with the right error code: send it, then close
            log.debug("protocol error from %s: %s", self._peer(), exc)
            self.observer.goaway_sent("protocol_error")
            self._drain_state = 2
            self.connection.flush()
            self._proxy.linger = True
            self.close_now()
            return
        self.connection.flush()
        reset_now: set[int] | None = None
        for event in events:
            if type(event) is StreamReset:
                if reset_now is None:
                    reset_now = set()
                reset_now.add(event.stream_id)
        processor = self.processor
        for event in events:
            kind = type(event)
            if kind is RequestReceived:
                self._on_request(event, reset_now)
            elif kind is StreamReset:
                self._on_reset(event)
            elif kind is WindowUpdated:
                streams = processor.streams
                if event.stream_id:
                    stream = streams.get(event.stream_id)
                    if stream is not None:
                        stream.window_updated_now()
                else:
                    for stream in streams.values():
                        stream.window_updated_now()
            elif kind is PingReceived:
                self._on_ping()
            elif kind is PingAckReceived:
                if event.ping_data == _DRAIN_PING:
                    self._probe_answered()
                elif event.ping_data == _CLOSE_PING:
                    if self._drain_state == 3:
                        self.close_now(self._drain_reason)
                else:
                    processor.process(event)
            elif kind is ConnectionTerminated:
                processor.process(event)
                self._shutdown("Received GOAWAY")
            else:
                processor.process(event)
            if not self.open:
                return
        self.connection.flush()

    def _on_request(self, event: RequestReceived, reset_now: set[int] | None) -> None:
        sid = event.stream_id
        if self.last_stream_id is not None and sid > self.last_stream_id:
            self._refuse(sid, "draining")
            return
        if self.server.stopping or self._refusing:
            # the grace ran out, or a busy connection that cannot take a GOAWAY is being
            # emptied: RST_STREAM(REFUSED_STREAM), never processed, so safe to retry
            self._refuse(sid, "draining")
            return
        self._last_active = time.monotonic()
        if reset_now is not None and sid in reset_now:
            return  # opened and reset in one read: never dispatched (_on_reset counts it)
        processor = self.processor
        if len(processor.streams) >= self.policy.max_concurrent_streams:
            self._refuse(sid, "max_concurrent_streams")
            return
        try:
            head = self._heads.get(event.headers)
        except UnicodeDecodeError:
            self._answer(sid, 13, "Malformed request: non-ASCII byte in a header", "bad_header")
            return
        if head.user_agent is not None:
            self.rides_goaway = _rides_goaway(head.user_agent)
        if head.size > self.policy.max_header_list_size:
            self._answer(
                sid,
                8,
                f"Request metadata of {head.size} bytes is over the limit of "
                f"{self.policy.max_header_list_size}",
                "header_list_size",
            )
            return
        stream = ServerH2Stream(self.connection, sid)
        processor.streams[sid] = stream
        self.handler.accept(stream, head, self._releaser(stream))

    def _releaser(self, stream: Any) -> Any:
        streams = self.processor.streams
        connection = self.connection

        def release_stream() -> None:
            # grpclib's EventsProcessor.register release: forget the stream, wake anyone
            # waiting for a stream to close, and ack (flow control) what it never read
            streams.pop(stream.id)
            connection.stream_close_waiter.set()
            if not connection.is_closing():
                connection.ack(stream.id, take_unacked(stream))
            # the call's task is ending: forget it now (instead of grpclib's periodic sweep)
            self.handler.tasks.pop(stream, None)
            self._last_active = time.monotonic()
            self._answered += 1
            if not streams:
                # the connection's last call: nothing else will join its frames, so they go
                # out now rather than a loop iteration later (one call at a time: -1 iteration)
                self._proxy.flush()
                if self._drain_state == 2:
                    self._close_when_read()
                elif self._drain_state == -1:
                    self._idle_while_draining()

        return release_stream

    def _on_reset(self, event: StreamReset) -> None:
        stream = self.processor.streams.get(event.stream_id)
        if event.remote_reset:
            self.observer.stream_reset(stream is None)
            now = time.monotonic()
            if now - self._reset_window_start > self.policy.reset_interval:
                self._reset_window_start = now
                self._resets = 0
            self._resets += 1
            if self._resets > self.policy.max_resets:
                log.warning("%s: more than %d stream resets: GOAWAY", self._peer(), self._resets)
                self.abort(ENHANCE_YOUR_CALM, "too_many_resets")
                return
        if stream is not None:
            self.processor.process(event)
            drop_buffered(stream)

    def _on_ping(self) -> None:
        """grpc-go's keepalive enforcement: a ping sooner than MinTime after the last one (or any
        ping with no call open, unless permitted) is a strike; too many -> too_many_pings."""
        policy = self.policy
        now = time.monotonic()
        if not policy.keepalive_permit_without_calls and not self.processor.streams:
            too_soon = now - self._last_ping < 2 * 3600.0
        else:
            too_soon = now - self._last_ping < policy.keepalive_min_time
        self._last_ping = now
        if too_soon:
            self.ping_strikes += 1
            if self.ping_strikes > policy.max_ping_strikes:
                log.info("%s: too many pings: GOAWAY", self._peer())
                self.abort(ENHANCE_YOUR_CALM, "too_many_pings", b"too_many_pings")

    # --- answers without a request task ---------------------------------------------------

    def _refuse(self, sid: int, reason: str) -> None:
        try:
            self.h2.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
        except ProtocolError:
            return
        self.observer.stream_refused(reason)

    def _answer(self, sid: int, status: int, message: str, reason: str) -> None:
        """Trailers-only gRPC status on a stream we will not dispatch, then reset it."""
        headers = [
            (":status", "200"),
            ("content-type", "application/grpc"),
            ("grpc-status", str(status)),
            ("grpc-message", encode_grpc_message(message)),
        ]
        try:
            self.h2.send_headers(sid, headers, end_stream=True)
            self.h2.reset_stream(sid, ErrorCodes.NO_ERROR)
        except ProtocolError:
            pass
        self._answered += 1
        self.observer.stream_refused(reason)

    # --- GOAWAY ------------------------------------------------------------------------------

    def send_goaway(self, code: int, reason: str, *, final: bool, debug: bytes = b"") -> None:
        """Write a GOAWAY frame ourselves: h2's own would move its state machine to CLOSED and
        refuse the streams a graceful drain must still accept."""
        if self._drain_state >= 2 or self.connection.is_closing():
            return
        if final:
            self._drain_state = 2
            last = self.h2.highest_inbound_stream_id
            self.last_stream_id = last
        else:
            last = _MAX_STREAM_ID
        self.connection.flush()
        frame = GoAwayFrame(0, last_stream_id=last, error_code=code, additional_data=debug)
        self._proxy.write(frame.serialize())
        self.observer.goaway_sent(reason)

    def drain(self, reason: str = "drain") -> None:
        """Close this connection without failing a call.

        Idle: PING; once the peer acks (every stream it opened before is here) and the
        connection is still idle, the final GOAWAY and close. Busy: grpc-go's GracefulStop,
        GOAWAY(2^31-1) + PING now, the final GOAWAY after the ack, close when the calls are
        done. Streams a peer opens after a final GOAWAY are unprocessed by definition and
        grpcio, grpc-go, grpc-java and grpc-js retry them transparently (gRFC A6).

        python-h2 clients (grpclib, httpx) end every call on a connection at any GOAWAY and treat
        any frame after one as a protocol error, so a busy connection of a client not known to
        ride a GOAWAY (by its user-agent) waits for its next idle moment, and the GOAWAY is
        always its last frame."""
        if self._drain_state or not self.open:
            return
        self._drain_reason = reason
        self._drain_state = -1  # waiting for an idle moment
        if self.rides_goaway and self.processor.streams:
            self.send_goaway(NO_ERROR, reason, final=False)
            self._send_drain_ping()
            return
        if not self.processor.streams:
            self._idle_while_draining()
        if not self.rides_goaway:
            # no quiet moment within this long (idle now or not: it may turn busy): refuse new
            # streams (no GOAWAY, the peer cannot take one while busy), let the calls it has
            # finish, then GOAWAY once quiet
            timer = self.loop.call_later(self.policy.drain_busy_refuse_after, self._refuse_new)
            self._timers.append(timer)

    def _refuse_new(self) -> None:
        if self._drain_state == -1 and self.open:
            self._refusing = True

    def _idle_while_draining(self) -> None:
        if self.rides_goaway:
            self._probe()
            return
        # grpclib's client also fails a finished call whose trailers its task has not read yet
        # when a GOAWAY arrives: give the last response a moment to be consumed
        timer = self.loop.call_later(self.policy.drain_idle_linger, self._probe)
        self._timers.append(timer)

    def _probe(self) -> None:
        if self._drain_state != -1 or not self.open or self.processor.streams:
            return
        if not self.rides_goaway:
            # idle for the whole linger, not just at this instant
            quiet_for = time.monotonic() - self._last_active
            linger = self.policy.drain_idle_linger
            if quiet_for < linger:
                timer = self.loop.call_later(linger - quiet_for, self._probe)
                self._timers.append(timer)
                return
        self._send_drain_ping()

    def _send_drain_ping(self) -> None:
        self._drain_state = 1
        self._ping_sent_at = time.monotonic()
        self._answered_at_ping = self._answered
        self.connection.flush()
        self._proxy.write(PingFrame(0, opaque_data=_DRAIN_PING).serialize())
        self._proxy.flush()
        timer = self.loop.call_later(self.policy.drain_ping_timeout, self._probe_answered, False)
        self._timers.append(timer)

    def _probe_answered(self, acked: bool = True) -> None:
        if self._drain_state != 1 or not self.open:
            return
        if self.rides_goaway:
            if self.processor.streams:
                self._final_goaway()
            else:
                self.send_goaway(NO_ERROR, self._drain_reason, final=True)
                self._close_when_read(acked and self._answered == self._answered_at_ping)
        elif not self.processor.streams and self._last_active <= self._ping_sent_at:
            self.close_now(self._drain_reason)
        else:  # a call came and went meanwhile: wait for the next quiet moment
            self._drain_state = -1
            if not self.processor.streams:
                self._idle_while_draining()

    def _final_goaway(self) -> None:
        if self._drain_state >= 2 or not self.open:
            return
        self.send_goaway(NO_ERROR, self._drain_reason, final=True)
        self._proxy.flush()
        if not self.processor.streams:
            self._close_when_read()

    def _close_when_read(self, covered: bool = False) -> None:
        """Close a drained, idle connection once the peer has parsed the answers we wrote last.

        HAProxy (2.6 at least) can hold the tail of a response (its trailers, even DATA)
        unparsed while the client's side has not taken the earlier DATA; if our socket closes
        meanwhile (a process exiting right after its FIN, or our linger ending), it ends the
        response with END_STREAM, truncated and without trailers: the client sees "no
        grpc-status". A FIN alone is harmless. A peer parses frames in order, so the ack of a
        PING written behind the last answer says it has them all: the close waits for that ack
        or for the peer to close; within a stop, up to its grace (an answer the peer has not
        read is a call not done), else up to LINGER_SECONDS (grpc-go waits up to 1 s for its
        peer before it closes). The final GOAWAY was sent; ``covered``: the ack of a PING
        written behind every answer is already in."""
        if not self.open or self._drain_state == 3:
            return
        if covered:
            self.close_now(self._drain_reason)
            return
        self._drain_state = 3
        self._answered_at_ping = self._answered
        self.connection.flush()
        self._proxy.write(PingFrame(0, opaque_data=_CLOSE_PING).serialize())
        self._proxy.flush()
        if not self.server.draining:  # else the stop closes what is open after its grace
            timer = self.loop.call_later(LINGER_SECONDS, self.close_now, self._drain_reason)
            self._timers.append(timer)

    def abort(self, code: int, reason: str, debug: bytes = b"") -> None:
        """GOAWAY with an error and close at once: every call on the connection ends."""
        self.send_goaway(code, reason, final=True, debug=debug)
        self._proxy.linger = True
        self.close_now()

    def close_now(self, reason: str = "close") -> None:
        if not self.open:
            return
        self.send_goaway(NO_ERROR, reason, final=True)
        self._proxy.linger = True
        self.server.lingering.add(self)
        self._proxy.close()
        self._shutdown("Connection closed by the server")

    def _age_reached(self) -> None:
        self.drain("max_connection_age")
        grace = self.policy.max_connection_age_grace
        if grace < float("inf"):
            timer = self.loop.call_later(grace, self.close_now, "max_connection_age")
            self._timers.append(timer)

    def _idle_check(self) -> None:
        if not self.open:
            return
        idle_for = time.monotonic() - self._last_active
        limit = self.policy.max_connection_idle
        if not self.processor.streams and idle_for >= limit:
            self.drain("max_connection_idle")
            return
        wait = limit - idle_for if not self.processor.streams else limit
        self._timers.append(self.loop.call_later(max(wait, 0.01), self._idle_check))

    # --- request message memory --------------------------------------------------------------

    def reserve(self, size: int) -> asyncio.Future[None] | None:
        """Room for a request message of ``size`` bytes: None when granted at once, else a future
        that completes when granted. A message alone is always granted (the max message length
        bounds it), so no read can wait forever on others that wait for it."""
        if self.pending_bytes == 0 or self.pending_bytes + size <= self.policy.max_pending_bytes:
            self.pending_bytes += size
            return None
        fut: asyncio.Future[None] = self.loop.create_future()
        self._room.append((size, fut))
        return fut

    def unreserve(self, size: int, fut: asyncio.Future[None] | None = None) -> None:
        """Give back room (``fut``: the reservation's future, granted or not)."""
        if fut is not None and (fut.cancelled() or not fut.done()):
            fut.cancel()
            return  # never granted: nothing to give back
        self.pending_bytes -= size
        room = self._room
        while room:
            want, waiter = room[0]
            if waiter.done():
                room.popleft()
                continue
            if self.pending_bytes and self.pending_bytes + want > self.policy.max_pending_bytes:
                break
            room.popleft()
            self.pending_bytes += want
            waiter.set_result(None)

    def _peer(self) -> str:
        try:
            host, port = self._proxy.get_extra_info("peername")[:2]
            return f"{host}:{port}"
        except Exception:
            return "?"
