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
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gen.echo.v1 import EchoRequest
from grpcstack.middleware import RateLimitMiddleware
from grpcstack.ratelimit import Limit, MemoryLimiter, RedisLimiter
from grpcstack.redis_multiplexed import MultiplexedRedis
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


@pytest.mark.parametrize("multiplexed", [True, False])
async def test_redis_limiter_exact_under_concurrency(redis_process: Any, multiplexed: bool) -> None:
    # the shared Resources pool blocks for a free connection instead of failing at 1000 callers
    # generous timeouts: on a loaded machine 1000 callers queue for the pool's 50 connections
    resources = Resources(
        settings(
            REDIS_URL=redis_process.url,
            REDIS_POOL_TIMEOUT_SECONDS=30,
            REDIS_SOCKET_TIMEOUT_SECONDS=30,
            REDIS_CONNECT_TIMEOUT_SECONDS=30,
            REDIS_MULTIPLEXED=multiplexed,
        )
    )
    try:
        mux = resources.redis_multiplexed(3)
        assert (mux is not None) is multiplexed
        limiter = RedisLimiter(resources.redis(3), 60, prefix="t1", multiplexed=mux)
        limits = [Limit("bob", 100)]
        decisions = await asyncio.gather(*(limiter.hit(limits) for _ in range(1000)))
        assert sum(d.allowed for d in decisions) == 100
        refused = [d for d in decisions if not d.allowed]
        assert all(d.backend == "redis" and 0 < d.retry_after <= 120 for d in refused)
        assert not limiter.degraded and limiter.failures == 0
    finally:
        await resources.close()


@pytest.mark.parametrize("multiplexed", [True, False])
async def test_redis_down_degrades_to_local_and_recovers(
    redis_process: Any, multiplexed: bool
) -> None:
    redis = Redis.from_url(redis_process.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    mux = MultiplexedRedis.from_url(redis_process.url, stall_timeout=0.5) if multiplexed else None
    try:
        limiter = RedisLimiter(
            redis, 60, prefix="t2", retry_backoff=0.2, max_backoff=0.2, multiplexed=mux
        )
        limits = [Limit("carol", 5)]
        assert (await limiter.hit(limits)).backend == "redis"
        redis_process.stop()
        degraded = [await limiter.hit(limits) for _ in range(8)]
        assert limiter.degraded and {d.backend for d in degraded} == {"memory"}
        assert sum(d.allowed for d in degraded) == 5  # the local limit still applies
        redis_process.start()  # same port
        async with asyncio.timeout(10):  # the probe after the backoff finds it back
            while (await limiter.hit([Limit("dave", 5)])).backend != "redis":
                await asyncio.sleep(0.05)
        assert not limiter.degraded and limiter.state == "closed"
    finally:
        await redis.aclose()
        if mux is not None:
            await mux.close()


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
    procs: list[Any] = []
    try:
        for _ in range(2):  # appended one by one: a failed second start still stops the first
            procs.append(await start_cli(env=env))
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
            try:
                await asyncio.wait_for(proc.wait(), 15)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()


def no_retry_client(url: str, timeout: float) -> Redis:
    return Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )


async def test_a_burst_of_failures_counts_once_and_one_probe_decides(redis_process: Any) -> None:
    clock = FakeClock()
    redis = no_retry_client(redis_process.url, 0.3)
    try:
        limiter = RedisLimiter(redis, 60, prefix="t3", retry_backoff=1.0, clock=clock)
        limits = [Limit("erin", 1000)]
        assert (await limiter.hit(limits)).backend == "redis"
        redis_process.pause()  # hung, not dead: every request waits for its socket timeout
        burst = await asyncio.gather(*(limiter.hit(limits) for _ in range(20)))
        assert {d.backend for d in burst} == {"memory"} and all(d.allowed for d in burst)
        assert limiter.failures == 1 and limiter._backoff == 1.0  # not doubled 20 times
        assert limiter.attempts == 21 and limiter.state == "open"
        clock.now += 0.5  # within the backoff nobody touches Redis
        await asyncio.gather(*(limiter.hit(limits) for _ in range(20)))
        assert limiter.attempts == 21
        clock.now += 0.6  # the backoff is over: one probe, the others stay degraded
        probed = await asyncio.gather(*(limiter.hit(limits) for _ in range(20)))
        assert limiter.attempts == 22 and {d.backend for d in probed} == {"memory"}
        assert limiter.failures == 2 and limiter._backoff == 2.0 and limiter.state == "open"
        redis_process.resume()
        clock.now += 2.1
        recovered = await asyncio.gather(*(limiter.hit(limits) for _ in range(5)))
        assert recovered[0].backend == "redis" and limiter.state == "closed"
        assert limiter.attempts == 23  # the probe alone went to Redis; the rest were degraded
        assert (await limiter.hit(limits)).backend == "redis" and limiter._backoff == 1.0
    finally:
        redis_process.resume()
        await redis.aclose()


async def test_limits_on_a_real_redis_cluster(tmp_path: Any) -> None:
    from redis.asyncio.cluster import RedisCluster as ClusterClient
    from redis.crc import key_slot
    from redis_cluster import RedisCluster

    cluster = RedisCluster(tmp_path)
    cluster.start()
    client = ClusterClient(host="127.0.0.1", port=cluster.ports[0])
    try:
        limiter = RedisLimiter(client, 60, prefix="rl")
        alice, bob, shared = Limit("user:alice", 5), Limit("user:bob", 5), Limit("global", 8)
        # without the hash tag these keys live on different slots (CROSSSLOT in one script)
        assert key_slot(b"rl:user:alice") != key_slot(b"rl:global")
        assert len({key_slot(limiter.key(x).encode()) for x in (alice, bob, shared)}) == 1
        a = [await limiter.hit([alice, shared]) for _ in range(7)]
        b = [await limiter.hit([bob, shared]) for _ in range(7)]
        assert [d.allowed for d in a] == [True] * 5 + [False] * 2
        assert [d.allowed for d in b] == [True] * 3 + [False] * 4
        assert a[-1].limit == alice and b[-1].limit == shared
        assert {d.backend for d in a + b} == {"redis"} and limiter.failures == 0
    finally:
        await client.aclose()
        cluster.stop()


@pytest.mark.parametrize(
    ("backend", "redis_url", "expected"),
    [("auto", True, RedisLimiter), ("auto", False, MemoryLimiter), ("memory", True, MemoryLimiter)],
)
async def test_rate_limit_backend_setting(
    redis_process: Any, backend: str, redis_url: bool, expected: type
) -> None:
    extra = {"REDIS_URL": redis_process.url} if redis_url else {}
    server = EchoServer(settings(GRPC_RATE_LIMIT_BACKEND=backend, **extra))
    async with running(server):
        assert server.chain is not None
        limiter = next(m for m in server.chain.middlewares if isinstance(m, RateLimitMiddleware))
        assert type(limiter.limiter) is expected
        assert (await call("grpclib", server.port, "Echo", EchoRequest())).status is Status.OK


def test_rate_limit_backend_redis_needs_a_url() -> None:
    with pytest.raises(ValueError, match="GRPC_RATE_LIMIT_BACKEND=redis needs REDIS_URL"):
        settings(GRPC_RATE_LIMIT_BACKEND="redis")
