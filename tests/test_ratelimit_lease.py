"""Redis rate-limit leases on a real redis-server: fewer round trips, one global limit shared by
two limiters and by two server processes (never over, under by at most processes x lease),
leases end with Redis's window, and Redis failure / recovery while tokens are held."""

from __future__ import annotations

import asyncio
import urllib.request
from typing import Any

from calls import call
from cli_process import start_cli
from grpclib.const import Status
from redis.asyncio import Redis
from redis_process import free_port

from gen.echo.v1 import EchoRequest
from grpcstack.ratelimit import Limit, RedisLimiter


async def test_a_lease_takes_the_round_trip_off_most_requests(redis_process: Any) -> None:
    redis = Redis.from_url(redis_process.url)
    try:
        limiter = RedisLimiter(redis, 60, prefix="l1", lease=50, lease_fraction=1.0)
        limits = [Limit("user:ann", 10_000), Limit("global", 100_000)]
        assert limiter.lease_size(limits[0]) == 50
        assert all([(await limiter.hit(limits)).allowed for _ in range(200)])
        assert limiter.attempts <= 6  # a reservation per ~40-50 requests
        # concurrent requests short of tokens share one reservation
        before = limiter.attempts
        decisions = await asyncio.gather(*(limiter.hit(limits) for _ in range(200)))
        assert all(d.allowed for d in decisions) and limiter.attempts - before <= 10
        await asyncio.gather(*limiter._ahead)  # a top-up may still be under way
        counted = int(await redis.hget(limiter.key(limits[1]), "c") or 0)
        assert 400 <= counted <= 400 + 50  # Redis counted every token, spent or held
        assert counted == 400 + limiter._leases["global"][0]
    finally:
        await redis.aclose()


async def test_a_lease_running_low_is_topped_up_before_it_runs_out(redis_process: Any) -> None:
    redis = Redis.from_url(redis_process.url)
    try:
        limiter = RedisLimiter(redis, 60, prefix="l6", lease=50, lease_fraction=1.0)
        limits = [Limit("user:ed", 1_000_000)]
        assert (await limiter.hit(limits)).allowed and limiter.attempts == 1
        assert all(limiter.take(limits) for _ in range(40))  # 9 left: below a quarter
        async with asyncio.timeout(5):  # the top-up lands in the background
            while limiter.attempts < 2 or limiter._ahead:
                await asyncio.sleep(0.01)
        assert limiter.attempts == 2
        assert limiter._leases["user:ed"][0] == 9 + (50 - 11)  # back to its size, no more
        assert int(await redis.hget(limiter.key(limits[0]), "c") or 0) == 50 + 39
    finally:
        await redis.aclose()


async def test_the_lease_is_capped_by_a_fraction_of_the_limit(redis_process: Any) -> None:
    redis = Redis.from_url(redis_process.url)
    try:
        limiter = RedisLimiter(redis, 60, prefix="l2", lease=100, lease_fraction=0.01)
        assert limiter.lease_size(Limit("a", 1_000_000)) == 100
        assert limiter.lease_size(Limit("a", 1000)) == 10
        assert limiter.lease_size(Limit("a", 50)) == 1  # too small to lease: exact per request
        small = [Limit("user:bo", 5)]
        decisions = [await limiter.hit(small) for _ in range(8)]
        assert [d.allowed for d in decisions] == [True] * 5 + [False] * 3
        # counted one by one; after Redis's refusal its hint holds here without asking again
        assert limiter.attempts == 6
        hints = [d.retry_after for d in decisions[5:]]
        assert hints == sorted(hints, reverse=True) and 0 < hints[-1] <= hints[0] <= 120
    finally:
        await redis.aclose()


async def test_two_limiters_share_one_limit_never_over(redis_process: Any) -> None:
    """Two limiters on their own connections (as two processes) drain one global limit at once."""
    clients = [Redis.from_url(redis_process.url) for _ in range(2)]
    try:
        lease, limit = 20, 300
        limiters = [
            RedisLimiter(c, 60, prefix="l3", lease=lease, lease_fraction=1.0) for c in clients
        ]
        shared = Limit("global", limit)

        async def spend(limiter: RedisLimiter, user: str) -> list[Any]:
            return [await limiter.hit([Limit(user, 10_000), shared]) for _ in range(250)]

        a, b = await asyncio.gather(spend(limiters[0], "user:a"), spend(limiters[1], "user:b"))
        allowed = sum(d.allowed for d in a + b)
        # tolerance: never over the limit; under by at most the tokens the processes hold
        assert limit - 2 * lease <= allowed <= limit
        refused = [d for d in a + b if not d.allowed]
        assert refused and all(d.limit == shared and 0 < d.retry_after <= 120 for d in refused)
        assert sum(x.attempts for x in limiters) < 100  # not one script call per request
    finally:
        for c in clients:
            await c.aclose()


async def test_leases_end_with_the_redis_window(redis_process: Any) -> None:
    redis = Redis.from_url(redis_process.url)
    try:
        limiter = RedisLimiter(redis, 1, prefix="l4", lease=1000, lease_fraction=1.0)
        limits = [Limit("user:cy", 1_000_000)]
        assert (await limiter.hit(limits)).allowed and limiter.attempts == 1
        until = limiter._leases["user:cy"][1]
        assert until - limiter.clock() <= 1.0  # at most what is left of the 1 s window
        async with asyncio.timeout(5):  # within a second the lease ends and Redis is asked again
            while limiter.attempts == 1:
                assert (await limiter.hit(limits)).allowed
                await asyncio.sleep(0.01)
        assert limiter.clock() >= until
    finally:
        await redis.aclose()


async def test_held_tokens_are_spent_while_redis_is_down_then_it_degrades(
    redis_process: Any,
) -> None:
    redis = Redis.from_url(redis_process.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        limiter = RedisLimiter(
            redis, 60, prefix="l5", retry_backoff=0.2, max_backoff=0.2, lease=5, lease_fraction=1.0
        )
        limits = [Limit("user:di", 1000)]
        assert (await limiter.hit(limits)).backend == "redis" and limiter.attempts == 1
        redis_process.stop()
        held = [await limiter.hit(limits) for _ in range(4)]  # the rest of the lease
        assert all(d.allowed and d.backend == "redis" for d in held) and limiter.attempts == 1
        degraded = await limiter.hit(limits)
        assert degraded.allowed and degraded.backend == "memory" and limiter.degraded
        redis_process.start()  # same port
        async with asyncio.timeout(10):  # the probe after the backoff finds it back
            while (await limiter.hit(limits)).backend != "redis" or limiter.degraded:
                await asyncio.sleep(0.05)
        before = limiter.attempts
        assert all([(await limiter.hit(limits)).allowed for _ in range(5)])
        assert limiter.attempts - before <= 2  # leasing again
    finally:
        await redis.aclose()


def _handled(metrics_port: int) -> dict[str, float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read()
    out: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line.startswith("grpc_server_handled_total{") and 'grpc_method="Echo"' in line:
            code = line.split('grpc_code="', 1)[1].split('"', 1)[0]
            out[code] = out.get(code, 0) + float(line.rsplit(" ", 1)[1])
    return out


async def test_two_processes_share_one_global_limit_with_leases(redis_process: Any) -> None:
    limit, lease = 200, 20
    env = {
        "REDIS_URL": redis_process.url,
        "GRPC_RATE_LIMIT_MAX_REQUESTS": "100000",
        "GRPC_RATE_LIMIT_GLOBAL_MAX_REQUESTS": str(limit),
        "GRPC_RATE_LIMIT_LEASE": str(lease),
        "GRPC_RATE_LIMIT_LEASE_FRACTION": "0.1",
        "GRPC_SERVER_HOST": "127.0.0.1",
    }
    procs: list[Any] = []
    metrics = [free_port(), free_port()]
    try:
        for m in metrics:  # appended one by one: a failed second start still stops the first
            procs.append(await start_cli(env=env | {"GRPC_METRICS_PORT": str(m)}))
        outs = []
        for i in range(300):
            _, port = procs[i % 2]
            outs.append(await call("grpclib", port, "Echo", EchoRequest()))
        ok = sum(o.status is Status.OK for o in outs)
        assert limit - 2 * lease <= ok <= limit  # the stated tolerance
        refused = [o for o in outs if o.status is not Status.OK]
        assert {o.status for o in refused} == {Status.RESOURCE_EXHAUSTED}
        assert all(f"global rate limit of {limit}" in (o.message or "") for o in refused)
        assert all(int(o.trailing["retry-after-ms"]) > 0 for o in refused)
        assert all(o.details and o.details[0].retry_delay.ToMilliseconds() > 0 for o in refused)
        counted = [_handled(m) for m in metrics]  # the servers' own books agree
        assert sum(c.get("OK", 0) for c in counted) == ok
        assert sum(c.get("ResourceExhausted", 0) for c in counted) == len(refused)
    finally:
        for proc, _ in procs:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 15)
