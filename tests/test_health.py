"""grpc.health.v1 through grpclib and grpcio clients: Check, Watch, readiness checks, stop."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from conftest import channel, running, settings
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from platform_services.echo import EchoServer

ECHO = "echo.v1.EchoService"
SERVING = HealthCheckResponse.SERVING
NOT_SERVING = HealthCheckResponse.NOT_SERVING


def grpcio_health(ch: grpc.aio.Channel, method: str) -> object:
    # grpcio-health-checking's _pb2 clashes with grpclib's in one process (same symbols), so the
    # official grpcio client is driven with grpclib's message classes: the wire is the same.
    factory = ch.unary_stream if method == "Watch" else ch.unary_unary
    return factory(
        f"/grpc.health.v1.Health/{method}",
        request_serializer=HealthCheckRequest.SerializeToString,
        response_deserializer=HealthCheckResponse.FromString,
    )


async def test_check_overall_and_per_service_grpclib() -> None:
    server = EchoServer(settings())
    async with running(server), channel(server) as ch:
        health = HealthStub(ch)
        assert (await health.Check(HealthCheckRequest())).status == SERVING
        assert (await health.Check(HealthCheckRequest(service=ECHO))).status == SERVING
        with pytest.raises(GRPCError) as err:
            await health.Check(HealthCheckRequest(service="no.such.Service"))
        assert err.value.status is Status.NOT_FOUND


async def test_check_and_watch_grpcio() -> None:
    server = EchoServer(settings())
    async with running(server), grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        check = grpcio_health(ch, "Check")
        assert (await check(HealthCheckRequest(service=ECHO))).status == SERVING
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await check(HealthCheckRequest(service="nope"))
        assert err.value.code() is grpc.StatusCode.NOT_FOUND
        watch = grpcio_health(ch, "Watch")(HealthCheckRequest(service=ECHO))
        first = await watch.read()
        assert first.status == SERVING
        watch.cancel()


async def test_readiness_check_flips_status_and_watch_follows() -> None:
    ready = True

    async def dependency() -> bool:
        return ready

    server = EchoServer(settings(GRPC_HEALTH_CHECK_INTERVAL_SECONDS=0.1))
    server.add_readiness_check(dependency, service=ECHO)
    async with running(server), channel(server) as ch:
        health = HealthStub(ch)
        async with health.Watch.open() as watch:
            await watch.send_message(HealthCheckRequest(service=ECHO), end=True)
            assert (await watch.recv_message()).status == SERVING
            ready = False
            assert (await asyncio.wait_for(watch.recv_message(), 2)).status == NOT_SERVING
            assert (await health.Check(HealthCheckRequest(service=ECHO))).status == NOT_SERVING
            # overall follows shared checks only: one service's dependency does not take the
            # whole replica out of rotation (policy in grpcstack/health.py)
            assert (await health.Check(HealthCheckRequest())).status == SERVING
            ready = True
            assert (await asyncio.wait_for(watch.recv_message(), 2)).status == SERVING
            await watch.cancel()


async def test_failing_and_hanging_checks_count_as_not_serving() -> None:
    async def broken() -> bool:
        raise ConnectionError("db down")

    async def hangs() -> bool:
        await asyncio.sleep(60)
        return True

    server = EchoServer(settings(GRPC_HEALTH_CHECK_TIMEOUT_SECONDS=0.2))
    server.add_readiness_check(hangs)  # every service
    async with running(server), channel(server) as ch:
        health = HealthStub(ch)
        assert (await health.Check(HealthCheckRequest(service=ECHO))).status == NOT_SERVING
    server2 = EchoServer(settings())
    server2.add_readiness_check(broken, service=ECHO)
    async with running(server2), channel(server2) as ch:
        assert (await HealthStub(ch).Check(HealthCheckRequest(service=ECHO))).status == NOT_SERVING


async def test_watch_unknown_service_then_stop_ends_stream() -> None:
    server = EchoServer(settings())
    async with running(server), channel(server) as ch:
        health = HealthStub(ch)
        async with health.Watch.open() as unknown:
            await unknown.send_message(HealthCheckRequest(service="x.Y"), end=True)
            assert (await unknown.recv_message()).status == HealthCheckResponse.SERVICE_UNKNOWN
            async with health.Watch.open() as watch:
                await watch.send_message(HealthCheckRequest(service=ECHO), end=True)
                assert (await watch.recv_message()).status == SERVING
                loop = asyncio.get_running_loop()
                t0 = loop.time()
                stop = asyncio.create_task(server.stop(30))
                # the watcher hears NOT_SERVING, then the stream ends: it does not eat the grace
                assert (await asyncio.wait_for(watch.recv_message(), 2)).status == NOT_SERVING
                with pytest.raises(GRPCError) as err:
                    await watch.recv_message()
                    await watch.recv_trailing_metadata()
                assert err.value.status is Status.UNAVAILABLE
                await asyncio.wait_for(stop, 5)
                assert loop.time() - t0 < 5
