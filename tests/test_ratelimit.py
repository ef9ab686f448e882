"""Sliding-window rate limits in process and in a real Redis: exactness, retry hints, Redis
failure and recovery, and one global limit across two server processes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from calls import call
from cli_process import start_cli
from conftest import running, settings
from grpclib.const import Status
from redis.asyncio import Redis

from gen.echo.v1 import EchoRequest
from grpcstack.ratelimit import Limit, MemoryLimiter, RedisLimiter
from grpcstack.resources import Resources
from platform_services.echo import EchoServer


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_memory_sliding_window_is_exact_at_the_boundary() -> None:
    clock = FakeClock(1000.0)  # start of a window (window 10 s)
    limiter = MemoryLimiter(10, clock)
    alice = [Limit("alice", 10)]
    assert sum(limiter.hit(alice).allowed for _ in range(15)) == 10
    refused = limiter.hit(alice)
    assert not refused.allowed
    clock.now += refused.retry_after - 0.01
    assert not limiter.hit(alice).allowed  # just before the hint
    clock.now += 0.02
    assert limiter.hit(alice).allowed  # just after it
    # a fixed window would allow 10 more right after the boundary; the sliding one allows 1
    clock.now = 1010.0 + 0.1
    assert sum(limiter.hit(alice).allowed for _ in range(10)) == 0
    clock.now = 1015.0  # half of the previous window still counts
    assert sum(limiter.hit(alice).allowed for _ in range(10)) == 4


def test_memory_limits_are_checked_together() -> None:
    limiter = MemoryLimiter(60, FakeClock())
    shared = Limit("global", 3)
    assert limiter.hit([Limit("a", 2), shared]).allowed
    assert limiter.hit([Limit("a", 2), shared]).allowed
    refused = limiter.hit([Limit("a", 2), shared])
    assert not refused.allowed and refused.limit == Limit("a", 2)
    assert limiter.hit([Limit("b", 2), shared]).allowed  # a's refusal did not spend global
    refused = limiter.hit([Limit("b", 2), shared])
    assert not refused.allowed and refused.limit == shared


async def test_redis_limiter_exact_under_concurrency(redis_process: Any) -> None:
    # the shared Resources pool blocks for a free connection instead of failing at 1000 callers
    resources = Resources(settings(REDIS_URL=redis_process.url))
    try:
        limiter = RedisLimiter(resources.redis(3), 60, prefix="t1")
        limits = [Limit("bob", 100)]
        decisions = await asyncio.gather(*(limiter.hit(limits) for _ in range(1000)))
        assert sum(d.allowed for d in decisions) == 100
        refused = [d for d in decisions if not d.allowed]
        assert all(d.backend == "redis" and 0 < d.retry_after <= 120 for d in refused)
        assert not limiter.degraded and limiter.failures == 0
    finally:
        await resources.close()


async def test_redis_down_degrades_to_local_and_recovers(redis_process: Any) -> None:
    redis = Redis.from_url(redis_process.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        limiter = RedisLimiter(redis, 60, prefix="t2", retry_backoff=0.2, max_backoff=0.2)
        limits = [Limit("carol", 5)]
        assert (await limiter.hit(limits)).backend == "redis"
        redis_process.stop()
        degraded = [await limiter.hit(limits) for _ in range(8)]
        assert limiter.degraded and {d.backend for d in degraded} == {"memory"}
        assert sum(d.allowed for d in degraded) == 5  # the local limit still applies
        redis_process.start()  # same port
        await asyncio.sleep(0.3)
        recovered = await limiter.hit([Limit("dave", 5)])
        assert recovered.backend == "redis" and not limiter.degraded
    finally:
        await redis.aclose()


@pytest.mark.parametrize(("mode", "status"), [("open", Status.OK), ("closed", Status.UNAVAILABLE)])
async def test_fail_open_and_closed(redis_process: Any, mode: str, status: Status) -> None:
    server = EchoServer(
        settings(
            REDIS_URL=redis_process.url,
            GRPC_RATE_LIMIT_FAIL_MODE=mode,
            GRPC_RATE_LIMIT_MAX_REQUESTS=1,
        )
    )
    async with running(server):
        redis_process.stop()
        outs = [await call("grpclib", server.port, "Echo", EchoRequest()) for _ in range(3)]
        assert {o.status for o in outs} == {status}


async def test_server_keeps_serving_while_redis_is_down(redis_process: Any) -> None:
    server = EchoServer(settings(REDIS_URL=redis_process.url, GRPC_RATE_LIMIT_MAX_REQUESTS=3))
    async with running(server):
        assert (await call("grpclib", server.port, "Echo", EchoRequest())).status is Status.OK
        redis_process.stop()
        outs = [await call("grpclib", server.port, "Echo", EchoRequest()) for _ in range(4)]
        assert [o.status for o in outs] == [Status.OK] * 3 + [Status.RESOURCE_EXHAUSTED]
        redis_process.start()


async def test_two_processes_share_one_global_limit(redis_process: Any) -> None:
    env = {
        "REDIS_URL": redis_process.url,
        "GRPC_ENABLE_AUTH": "false",
        "GRPC_RATE_LIMIT_MAX_REQUESTS": "1000",
        "GRPC_RATE_LIMIT_GLOBAL_MAX_REQUESTS": "10",
        "GRPC_SERVER_HOST": "127.0.0.1",
    }
    procs = [await start_cli(env=env) for _ in range(2)]
    try:
        outs = []
        for i in range(30):
            _, port = procs[i % 2]
            outs.append(await call("grpclib", port, "Echo", EchoRequest()))
        assert sum(o.status is Status.OK for o in outs) == 10
        refused = [o for o in outs if o.status is not Status.OK]
        assert {o.status for o in refused} == {Status.RESOURCE_EXHAUSTED}
        assert all("global rate limit of 10" in (o.message or "") for o in refused)
    finally:
        for proc, _ in procs:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 15)
