"""AsyncBaseServer lifecycle: hooks, ports, graceful and expired drains."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import h2.connection
import hpack
import hyperframe.frame
import pytest
from conftest import bound_socket, channel, running, settings
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from h2_client import GRPC_HEADERS, grpc_frame
from waiting import eventually

from gen.echo.v1 import EchoRequest, EchoResponse, EchoServiceStub
from grpcstack import AsyncBaseServer
from grpcstack.transport import connection as transport_connection
from grpcstack.transport.policy import ConnectionPolicy
from platform_services.echo import EchoServer


async def test_hook_order_and_health_serving() -> None:
    server = EchoServer(settings())
    async with running(server), channel(server) as ch:
        assert server.calls == ["before_start", "services", "after_start"]
        reply = await EchoServiceStub(ch).echo(EchoRequest(message="hi"))
        assert reply.message == "hi"
    assert server.calls[-2:] == ["before_stop", "after_stop"]
    assert not server.resources.opened


@pytest.mark.parametrize("hook", ["before_start", "after_start"])
async def test_start_hook_that_raises(hook: str) -> None:
    server = EchoServer(settings(), fail_in=hook)
    sock = bound_socket()
    with pytest.raises(RuntimeError, match=f"{hook} failed"):
        await server.start(sock=sock)
    if hook == "after_start":  # the server was up: start() stopped it with the stop hooks
        assert server.calls[-2:] == ["before_stop", "after_stop"]
    else:
        assert "services" not in server.calls
    assert not server.resources.opened
    # nothing is left listening
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])


async def test_before_stop_that_raises_still_stops() -> None:
    server = EchoServer(settings(), fail_in="before_stop")
    await server.start(sock=bound_socket())
    port = server.port
    with pytest.raises(RuntimeError, match="before_stop failed"):
        await server.stop(0)
    assert server.calls[-1] == "after_stop"
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_port_zero_binds_an_ephemeral_port() -> None:
    server = EchoServer(settings(GRPC_SERVER_PORT=0))
    await server.start()
    try:
        assert server.port and server.port > 0
        async with channel(server) as ch:
            assert (await EchoServiceStub(ch).echo(EchoRequest(message="x"))).message == "x"
    finally:
        await server.stop(0)


async def test_services_is_required() -> None:
    class Empty(AsyncBaseServer):
        pass

    with pytest.raises(NotImplementedError, match="must implement services"):
        await Empty(settings()).start(sock=bound_socket())


async def test_graceful_stop_lets_inflight_call_finish() -> None:
    server = EchoServer(settings())
    gate = asyncio.Event()  # the in-flight calls finish when the test says so, not on a timer
    arrived: list[str] = []

    async def held(message: EchoRequest) -> EchoResponse:
        arrived.append(message.message)
        await gate.wait()
        server.echo.finished += 1
        return EchoResponse(message=message.message)

    server.echo.echo = held  # type: ignore[method-assign]
    async with running(server), channel(server) as ch:
        stub = EchoServiceStub(ch)
        call = asyncio.create_task(stub.echo(EchoRequest(message="slow")))
        await eventually(lambda: arrived == ["slow"])
        stop = asyncio.create_task(server.stop(30))
        await eventually(lambda: server.grpc_server is not None and server.grpc_server.draining)
        # a busy connection gets its GOAWAY when it next falls idle (grpclib's client ends
        # in-flight calls on any GOAWAY), so a call sent on it now is still served, not refused
        late = asyncio.create_task(stub.echo(EchoRequest(message="late")))
        await eventually(lambda: arrived == ["slow", "late"])
        assert not stop.done()  # still waiting for the in-flight calls
        gate.set()
        assert (await late).message == "late"
        assert (await call).message == "slow"
        await asyncio.wait_for(stop, 10)
    assert server.echo.finished == 2


async def test_stop_whose_grace_expires_answers_unavailable() -> None:
    server = EchoServer(settings())
    async with running(server), channel(server) as ch:
        call = asyncio.create_task(
            EchoServiceStub(ch).echo(EchoRequest(message="too slow", sleep_seconds=30))
        )
        await server.echo.started.wait()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await server.stop(0.3)
        assert loop.time() - t0 < 3
        with pytest.raises(GRPCError) as err:
            await asyncio.wait_for(call, 5)
        assert err.value.status is Status.UNAVAILABLE
        assert "shutting down" in (err.value.message or "")


async def test_grace_expiry_seen_by_grpcio_client(pb2) -> None:
    server = EchoServer(settings())
    async with running(server), grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = pb2.echo_grpc.EchoServiceStub(ch)
        call = stub.Echo(pb2.echo.EchoRequest(message="x", sleep_seconds=30), timeout=10)
        await server.echo.started.wait()
        await server.stop(0.2)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_stop_is_idempotent_and_wait_for_termination_returns() -> None:
    server = EchoServer(settings())
    async with running(server):
        waiter = asyncio.create_task(server.wait_for_termination())
        await asyncio.gather(server.stop(0), server.stop(0))
        await asyncio.wait_for(waiter, 10)
    assert server.calls.count("after_stop") == 1


async def test_idle_connection_does_not_block_stop() -> None:
    server = EchoServer(settings())
    async with running(server), channel(server) as conn:
        await EchoServiceStub(conn).echo(EchoRequest(message="warm"))
        await asyncio.wait_for(server.stop(30), 10)  # returns without waiting for the client
        assert server.calls[-1] == "after_stop"
        # the server said GOAWAY and closed: grpclib's client opens a new connection, which
        # nothing accepts any more (a refused connect, not a status from a stopped server)
        with pytest.raises((ConnectionError, OSError)):
            await EchoServiceStub(conn).echo(EchoRequest(message="after"))


class FramePeer:
    """A client that reads the server's frames one by one (python-h2 stops at the first GOAWAY,
    so it cannot show what follows one). It acks SETTINGS and PINGs (those after the call's
    status only while ``ack_late_pings``), and records every frame."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = hpack.Decoder()
        self.seen: list[tuple[str, float, Any]] = []  # kind, loop time, detail
        self.ack_late_pings = True

    @classmethod
    async def call(cls, port: int, request: bytes, user_agent: str) -> FramePeer:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        conn = h2.connection.H2Connection()
        conn.initiate_connection()
        conn.send_headers(1, [*GRPC_HEADERS.items(), ("user-agent", user_agent)])
        conn.send_data(1, grpc_frame(request), end_stream=True)
        writer.write(conn.data_to_send())
        return cls(reader, writer)

    async def read_until_closed(self, timeout: float = 15) -> None:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while True:
                try:
                    head = await self.reader.readexactly(9)
                except asyncio.IncompleteReadError:
                    self.seen.append(("closed", loop.time(), None))
                    return
                frame, length = hyperframe.frame.Frame.parse_frame_header(memoryview(head))
                frame.parse_body(memoryview(await self.reader.readexactly(length)))
                now = loop.time()
                if isinstance(frame, hyperframe.frame.SettingsFrame) and "ACK" not in frame.flags:
                    self.writer.write(hyperframe.frame.SettingsFrame(0, flags=["ACK"]).serialize())
                elif isinstance(frame, hyperframe.frame.PingFrame) and "ACK" not in frame.flags:
                    self.seen.append(("ping", now, None))
                    if "status" in self.kinds() and not self.ack_late_pings:
                        continue
                    ack = hyperframe.frame.PingFrame(0, flags=["ACK"])
                    ack.opaque_data = frame.opaque_data
                    self.writer.write(ack.serialize())
                elif isinstance(frame, hyperframe.frame.GoAwayFrame):
                    self.seen.append(("goaway", now, (frame.last_stream_id, frame.error_code)))
                elif isinstance(frame, hyperframe.frame.HeadersFrame):
                    headers = dict(self.decoder.decode(frame.data, raw=False))
                    if "grpc-status" in headers:
                        self.seen.append(("status", now, int(headers["grpc-status"])))

    def kinds(self) -> list[str]:
        return [kind for kind, _, _ in self.seen]


def gated_echo(server: EchoServer) -> asyncio.Event:
    """Echo holds every call until the returned event is set."""
    gate = asyncio.Event()

    async def held(message: EchoRequest) -> EchoResponse:
        server.echo.started.set()
        await gate.wait()
        return EchoResponse(message=message.message)

    server.echo.echo = held  # type: ignore[method-assign]
    return gate


async def test_stop_drains_a_busy_connection_with_two_goaways() -> None:
    """grpc-go's GracefulStop on a busy connection of a client known to ride GOAWAY (here one
    that says it is grpc-go): GOAWAY(2^31-1) + PING at once, the final GOAWAY (naming stream 1)
    after the ack; the accepted call still completes OK; then a PING behind its answer, and the
    close only once that is acked (a socket closed before the peer has parsed the answer can
    cost it the trailers: tests/test_haproxy.py)."""
    server = EchoServer(settings())
    gate = gated_echo(server)
    async with running(server):
        peer = await FramePeer.call(server.port, bytes(EchoRequest(message="m")), "grpc-go/1.70.0")
        await server.echo.started.wait()
        stop = asyncio.create_task(server.stop(30))
        reading = asyncio.create_task(peer.read_until_closed())
        final = ("goaway", 1)
        try:
            await eventually(lambda: final in [(k, d and d[0]) for k, _, d in peer.seen], timeout=5)
            assert not reading.done()  # the final GOAWAY did not end the accepted call
        finally:
            gate.set()  # whatever happened, let the call and the stop finish
        await reading
        peer.writer.close()
        await asyncio.wait_for(stop, 15)
    kinds = peer.kinds()
    assert kinds[:2] == ["goaway", "ping"], kinds
    assert kinds[-3:] == ["status", "ping", "closed"], kinds
    goaways = [detail for kind, _, detail in peer.seen if kind == "goaway"]
    assert goaways[0] == (2**31 - 1, 0) and goaways[-1] == (1, 0)
    statuses = [detail for kind, _, detail in peer.seen if kind == "status"]
    assert statuses == [Status.OK.value]


async def test_a_peer_that_never_acks_the_last_ping_is_closed_when_the_stop_grace_ends() -> None:
    """Within a stop, an answer the peer has not confirmed reading is a call not yet done: the
    close waits for the ack up to the grace, not longer."""
    server = EchoServer(settings())
    gate = gated_echo(server)
    async with running(server):
        peer = await FramePeer.call(server.port, bytes(EchoRequest(message="m")), "grpc-go/1.70.0")
        peer.ack_late_pings = False
        await server.echo.started.wait()
        stop_at = asyncio.get_running_loop().time()
        stop = asyncio.create_task(server.stop(1.0))
        reading = asyncio.create_task(peer.read_until_closed())
        try:
            await eventually(lambda: peer.kinds().count("goaway") == 2, timeout=5)
        finally:
            gate.set()
        await reading
        peer.writer.close()
        await asyncio.wait_for(stop, 15)
    kinds = peer.kinds()
    assert kinds[-3:] == ["status", "ping", "closed"], kinds
    # the grace is a deadline on the server's loop: it can only pass late, never early
    assert peer.seen[-1][1] - stop_at >= 1.0 * 0.9
    assert [d for kind, _, d in peer.seen if kind == "status"] == [Status.OK.value]


async def test_an_aged_connection_whose_peer_never_acks_the_last_ping_closes_after_the_linger(
    monkeypatch: Any,
) -> None:
    """Outside a stop (max_connection_age here) the wait for that ack is LINGER_SECONDS."""
    monkeypatch.setattr(transport_connection, "LINGER_SECONDS", 0.5)
    server = EchoServer(settings(GRPC_MAX_CONNECTION_AGE_MS=200))
    gate = gated_echo(server)
    async with running(server):
        peer = await FramePeer.call(server.port, bytes(EchoRequest(message="m")), "grpc-go/1.70.0")
        peer.ack_late_pings = False
        reading = asyncio.create_task(peer.read_until_closed())
        try:
            await eventually(lambda: peer.kinds().count("goaway") == 2, timeout=5)
        finally:
            gate.set()
        await reading
        peer.writer.close()
    kinds = peer.kinds()
    assert kinds[-3:] == ["status", "ping", "closed"], kinds
    pinged, closed = (t for _, t, _ in peer.seen[-2:])
    # the linger is a timer on the server's loop: it can only fire late, never early
    assert closed - pinged >= 0.5 * 0.9
    assert [d for kind, _, d in peer.seen if kind == "status"] == [Status.OK.value]


async def test_stop_returns_only_once_the_sockets_it_closed_are_closed(monkeypatch: Any) -> None:
    """After its FIN the server reads on for the linger (closing with unread input is a TCP
    RST); a stop waits for that, else a process exiting right after stop() closes the socket
    under the peer, whose next frame is answered with a RST that costs the peer input it had
    not parsed yet (HAProxy then ends a response without its trailers)."""
    monkeypatch.setattr(transport_connection, "LINGER_SECONDS", 0.5)
    server = EchoServer(settings())
    async with running(server):
        peer = await FramePeer.call(server.port, bytes(EchoRequest(message="m")), "grpc-go/1.70.0")
        reading = asyncio.create_task(peer.read_until_closed())
        await eventually(lambda: "status" in peer.kinds(), timeout=5)
        stop = asyncio.create_task(server.stop(30))
        await reading  # up to the server's FIN; the peer keeps its own side open
        fin_at = peer.seen[-1][1]
        await asyncio.wait_for(stop, 15)
        stopped_at = asyncio.get_running_loop().time()
        peer.writer.close()
    assert peer.kinds() == ["status", "ping", "goaway", "closed"], peer.kinds()
    # the linger is a timer on the server's loop: it can only fire late, never early
    assert stopped_at - fin_at >= 0.5 * 0.9


async def test_stop_sends_a_grpclib_connection_its_goaway_after_an_idle_linger() -> None:
    """A grpclib peer (by its user-agent) ends every open call on any GOAWAY: it gets none while
    its call runs, and its only GOAWAY comes once the connection has been idle for the linger."""
    server = EchoServer(settings())
    gate = gated_echo(server)
    async with running(server):
        peer = await FramePeer.call(
            server.port, bytes(EchoRequest(message="m")), "grpc-python-grpclib/0.4.9"
        )
        await server.echo.started.wait()
        stop = asyncio.create_task(server.stop(30))
        reading = asyncio.create_task(peer.read_until_closed())
        await eventually(lambda: "before_stop" in server.calls)
        gate.set()
        await reading
        peer.writer.close()
        await asyncio.wait_for(stop, 15)
    kinds = peer.kinds()
    assert kinds.count("goaway") == 1 and kinds[-2:] == ["goaway", "closed"], kinds
    assert kinds.index("status") < kinds.index("goaway")
    answered = next(t for kind, t, _ in peer.seen if kind == "status")
    goaway_at = next(t for kind, t, _ in peer.seen if kind == "goaway")
    # the linger is a timer on the server's loop: it can only fire late, never early
    assert goaway_at - answered >= ConnectionPolicy().drain_idle_linger * 0.9
    assert [d for kind, _, d in peer.seen if kind == "status"] == [Status.OK.value]
