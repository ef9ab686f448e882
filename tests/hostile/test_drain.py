"""A drain that clients ride through: calls in a loop across a stop lose nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from conftest import bound_socket, channel, settings

from gen.echo.v1 import EchoRequest, EchoServiceStub
from platform_services.echo import EchoServer


async def _loop_until(stop: asyncio.Event, call: Any, outcomes: list[str]) -> None:
    while not stop.is_set():
        try:
            await call()
            outcomes.append("ok")
        except Exception as exc:  # recorded, asserted on below
            outcomes.append(repr(exc))


async def test_grpcio_clients_lose_no_call_when_one_of_two_servers_stops(pb2: Any) -> None:
    first, second = EchoServer(settings()), EchoServer(settings())
    await first.start(sock=bound_socket())
    await second.start(sock=bound_socket())
    try:
        target = f"ipv4:127.0.0.1:{first.port},127.0.0.1:{second.port}"
        options = [("grpc.lb_policy_name", "round_robin")]
        async with grpc.aio.insecure_channel(target, options=options) as ch:
            stub = pb2.echo_grpc.EchoServiceStub(ch)

            async def call() -> None:
                await stub.Echo(pb2.echo.EchoRequest(message="x", sleep_seconds=0.01), timeout=10)

            done = asyncio.Event()
            outcomes: list[str] = []
            workers = [asyncio.create_task(_loop_until(done, call, outcomes)) for _ in range(4)]
            async with asyncio.timeout(20):
                while first.echo.finished < 20 or second.echo.finished < 20:
                    await asyncio.sleep(0.01)
            served_before = first.echo.finished
            await first.stop(5)  # what SIGTERM does
            after = len(outcomes)
            async with asyncio.timeout(20):
                while len(outcomes) < after + 50:
                    await asyncio.sleep(0.01)
            done.set()
            await asyncio.gather(*workers)
        assert [o for o in outcomes if o != "ok"] == []
        assert first.echo.finished >= served_before
        assert second.echo.finished >= 20 + 50 // 2
    finally:
        await second.stop(1)
        if first.grpc_server is not None:
            await first.stop(0)


async def test_grpclib_client_sees_only_connect_errors_across_a_stop() -> None:
    server = EchoServer(settings())
    await server.start(sock=bound_socket())
    outcomes: list[str] = []
    try:
        async with channel(server) as ch:
            stub = EchoServiceStub(ch)

            async def call() -> None:
                await stub.echo(EchoRequest(message="x", sleep_seconds=0.01))

            done = asyncio.Event()
            workers = [asyncio.create_task(_loop_until(done, call, outcomes)) for _ in range(3)]
            async with asyncio.timeout(20):
                while server.echo.finished < 20:
                    await asyncio.sleep(0.01)
            await server.stop(5)
            errors_before = sum(o != "ok" for o in outcomes)
            async with asyncio.timeout(20):
                while sum(o != "ok" for o in outcomes) < errors_before + 3:
                    await asyncio.sleep(0.01)
            done.set()
            await asyncio.gather(*workers)
    finally:
        if server.grpc_server is not None and server._stop_task is None:
            await server.stop(0)
    failures = [o for o in outcomes if o != "ok"]
    assert outcomes.count("ok") >= 20
    # failures are refused connections, or calls sent as the connection closed (the server
    # never read them): no call the server accepted was lost or answered UNAVAILABLE
    assert failures
    allowed = (
        "ConnectionRefusedError",
        "OSError",
        "StreamTerminatedError('Connection lost')",
        # a call sent as the final GOAWAY left: above its last stream id, so never processed
        "StreamTerminatedError('Received GOAWAY frame",
        # refused while the busy connection was emptied: RST_STREAM(REFUSED_STREAM), unprocessed
        "StreamTerminatedError('Stream reset by remote party, error_code: 7')",
    )
    assert all(o.startswith(allowed) for o in failures), failures
    assert server.echo.finished == outcomes.count("ok")
