"""AsyncBaseServer lifecycle: hooks, ports, graceful and expired drains."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import h2.connection
import h2.errors
import h2.events
import pytest
from conftest import bound_socket, channel, running, settings
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from h2_client import GRPC_HEADERS, grpc_frame
from waiting import eventually

from gen.echo.v1 import EchoRequest, EchoResponse, EchoServiceStub
from grpcstack import AsyncBaseServer
from grpcstack.server import GOAWAY_LINGER_SECONDS
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


async def test_stop_answers_in_flight_then_goaway_after_the_linger() -> None:
    """On a raw HTTP/2 connection: the in-flight call's UNAVAILABLE trailers arrive first, the
    GOAWAY (NO_ERROR, naming the last stream the server took) at least GOAWAY_LINGER_SECONDS
    later, then the server closes the connection."""
    server = EchoServer(settings())
    async with running(server):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        conn = h2.connection.H2Connection()
        conn.initiate_connection()
        conn.send_headers(1, list(GRPC_HEADERS.items()))
        conn.send_data(1, grpc_frame(bytes(EchoRequest(sleep_seconds=30))), end_stream=True)
        writer.write(conn.data_to_send())
        await server.echo.started.wait()
        loop = asyncio.get_running_loop()
        stop = asyncio.create_task(server.stop(0.1))
        seen: list[tuple[str, float, Any]] = []
        try:
            async with asyncio.timeout(10):
                while data := await reader.read(65536):
                    for event in conn.receive_data(data):
                        if isinstance(
                            event, h2.events.TrailersReceived | h2.events.ResponseReceived
                        ):
                            seen.append(("headers", loop.time(), dict(event.headers)))
                        elif isinstance(event, h2.events.ConnectionTerminated):
                            seen.append(("goaway", loop.time(), event))
                    writer.write(conn.data_to_send())
            seen.append(("closed", loop.time(), None))
        finally:
            writer.close()
        await asyncio.wait_for(stop, 10)
    kinds = [kind for kind, _, _ in seen]
    assert kinds == ["headers", "goaway", "closed"], kinds
    (_, answered, headers), (_, goaway_at, goaway), _ = seen
    assert headers[b"grpc-status"] == str(Status.UNAVAILABLE.value).encode()
    assert goaway.error_code == h2.errors.ErrorCodes.NO_ERROR
    assert goaway.last_stream_id == 1
    # the linger is a sleep on the server's loop: it can only come late, never early
    assert goaway_at - answered >= GOAWAY_LINGER_SECONDS * 0.9
