"""AsyncBaseServer lifecycle: hooks, ports, graceful and expired drains."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from conftest import bound_socket, channel, running, settings
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from gen.echo.v1 import EchoRequest, EchoServiceStub
from grpcstack import AsyncBaseServer
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
    await server.start(sock=bound_socket())
    async with channel(server) as ch:
        stub = EchoServiceStub(ch)
        call = asyncio.create_task(stub.echo(EchoRequest(message="slow", sleep_seconds=0.5)))
        await server.echo.started.wait()
        stop = asyncio.create_task(server.stop(5))
        async with asyncio.timeout(5):
            while server.grpc_server is None or not server.grpc_server.draining:
                await asyncio.sleep(0.01)
        # a busy connection gets its GOAWAY when it next falls idle (grpclib's client ends
        # in-flight calls on any GOAWAY), so a call sent on it now is still served, not refused
        assert (await stub.echo(EchoRequest(message="late"))).message == "late"
        assert (await call).message == "slow"
        await stop
    assert server.echo.finished == 2


async def test_stop_whose_grace_expires_answers_unavailable() -> None:
    server = EchoServer(settings())
    await server.start(sock=bound_socket())
    async with channel(server) as ch:
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
    await server.start(sock=bound_socket())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = pb2.echo_grpc.EchoServiceStub(ch)
        call = stub.Echo(pb2.echo.EchoRequest(message="x", sleep_seconds=30), timeout=10)
        await server.echo.started.wait()
        await server.stop(0.2)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_stop_is_idempotent_and_wait_for_termination_returns() -> None:
    server = EchoServer(settings())
    await server.start(sock=bound_socket())
    waiter = asyncio.create_task(server.wait_for_termination())
    await asyncio.gather(server.stop(0), server.stop(0))
    await asyncio.wait_for(waiter, 2)
    assert server.calls.count("after_stop") == 1


async def test_idle_connection_does_not_block_stop() -> None:
    server = EchoServer(settings())
    await server.start(sock=bound_socket())
    ch = channel(server)
    async with ch as conn:
        await EchoServiceStub(conn).echo(EchoRequest(message="warm"))
        await asyncio.wait_for(server.stop(5), 4)  # returns without waiting for the client
        with pytest.raises((GRPCError, StreamTerminatedError, ConnectionError, OSError)):
            await EchoServiceStub(conn).echo(EchoRequest(message="after"))
