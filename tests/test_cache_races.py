"""The tiered cache under races, hangs and outages (issue 14), against real redis-server processes:
loads racing invalidations (in one process and across two), listener gaps, bounded and cancelled
loads, the listener's own connection."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
from conftest import ROOT, settings

from grpcstack.cache import GrpcCache, LRUMemoryCache, Tier, TieredCache
from grpcstack.cache.envelope import KIND_VALUE
from grpcstack.cache.redis import SharedRedisCache
from grpcstack.resources import Resources

METHOD = "/race.v1.Svc/Get"
KEY = "v1:{race.v1.Svc/Get}:anon:k"
PATTERN = "v1:{race.v1.Svc/Get}:*"


@pytest.fixture(params=["multiplexed", "pool"])
async def resources(redis_process: Any, request: Any) -> AsyncIterator[Resources]:
    """L2 reads and guarded writes over the multiplexed connection (the default), or the pool."""
    res = Resources(
        settings(REDIS_URL=redis_process.url, REDIS_MULTIPLEXED=request.param == "multiplexed")
    )
    yield res
    await res.close()


def tiered(resources: Resources, **kwargs: Any) -> TieredCache:
    return TieredCache(
        [
            Tier("l1", LRUMemoryCache(100), 300),
            Tier(
                "l2",
                SharedRedisCache(resources.redis(2), fast=resources.redis_multiplexed(2)),
                3600,
                0.5,
            ),
        ],
        service="test",
        namespace="t",
        pubsub=resources.redis(2),
        **kwargs,
    )


def counter(cache: TieredCache, metric: Any, *labels: str) -> float:
    return float(cache.metrics.child(metric, *labels)._value.get())


async def eventually(predicate: Any, within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while not await predicate():
            await asyncio.sleep(0.02)


class Source:
    """The data behind the cache (a shared Redis key, as a database would be)."""

    def __init__(self, resources: Resources) -> None:
        self.redis = resources.redis(5)

    async def write(self, value: bytes) -> None:
        await self.redis.set("source", value)

    def loader(
        self, started: asyncio.Event | None = None, gate: asyncio.Event | None = None
    ) -> Any:
        async def load() -> bytes:
            value = await self.redis.get("source")  # read first, answer later: a slow query
            if started is not None:
                started.set()
            if gate is not None:
                await gate.wait()
            return bytes(value)

        return load


@pytest.mark.parametrize("listening", [True, False])
@pytest.mark.parametrize("invalidation", ["method", "key"])
async def test_a_load_begun_before_an_invalidation_never_writes_after_it(
    resources: Resources, invalidation: str, listening: bool
) -> None:
    loader_side, writer_side = tiered(resources), tiered(resources)  # two processes' views
    await writer_side.start()
    if listening:  # else the broadcast is late: only Redis's compare-and-set protects
        await loader_side.start()
    source = Source(resources)
    try:
        await source.write(b"old")
        started, gate = asyncio.Event(), asyncio.Event()
        load = asyncio.create_task(
            loader_side.get_or_load(KEY, source.loader(started, gate), method=METHOD)
        )
        await started.wait()  # the load has read "old"
        await source.write(b"new")
        if invalidation == "method":
            await writer_side.invalidate_generation(METHOD, PATTERN)
        else:
            await writer_side.delete(KEY, method=METHOD)
        gate.set()
        assert await load == (KIND_VALUE, b"old")  # its caller still gets its answer
        if not listening:
            assert counter(loader_side, loader_side.metrics.stale_writes, "test", METHOD) == 1
        for cache in (writer_side, loader_side):  # and then everybody reads the new value
            got = await cache.get_or_load(KEY, source.loader(), method=METHOD)
            assert got == (KIND_VALUE, b"new")
    finally:
        for cache in (loader_side, writer_side):
            await cache.close()


async def test_invalidating_one_method_keeps_other_methods_loads(resources: Resources) -> None:
    cache = tiered(resources)
    started, gate = asyncio.Event(), asyncio.Event()
    source = Source(resources)
    await source.write(b"other")
    other = "v1:{race.v1.Svc/Other}:anon:k"
    load = asyncio.create_task(
        cache.get_or_load(other, source.loader(started, gate), method="/race.v1.Svc/Other")
    )
    await started.wait()
    await cache.invalidate_generation(METHOD, PATTERN)
    gate.set()
    await load
    assert await cache.get(other, method="/race.v1.Svc/Other") == b"other"  # it was kept
    await cache.close()


async def test_listener_gap_is_made_up_on_resubscribe(resources: Resources) -> None:
    cache = tiered(resources)
    await cache.start()
    assert cache.listener is not None and cache.listener.subscriptions == 1
    cache.listener.retry_seconds = 0.05
    try:
        await cache.set(KEY, b"old", method=METHOD)
        assert await cache.get(KEY, method=METHOD) == b"old"
        redis = resources.redis(2)
        await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        # an invalidation whose message this process cannot receive: INCR without publishing
        await redis.incr(cache.generations.key(METHOD))

        async def resubscribed() -> bool:
            assert cache.listener is not None
            return cache.listener.subscriptions >= 2

        await eventually(resubscribed)
        # redis-py's retry reconnected and resubscribed by itself (no failure reached the
        # listener): Redis's confirmation still made the listener re-read the generations
        assert cache.listener.failures == 0
        assert await cache.get(KEY, method=METHOD) is None  # L1's old generation is gone
    finally:
        await cache.close()


async def test_a_failed_bump_is_retried_and_broadcast(
    resources: Resources, redis_process: Any
) -> None:
    cache, peer = tiered(resources), tiered(resources)
    await peer.start()  # another process, listening
    cache.generations.retry_seconds = 0.05
    try:
        await cache.set(KEY, b"old", method=METHOD)
        assert await peer.get(KEY, method=METHOD) == b"old"  # now in the peer's L1 too
        redis_process.pause()  # hung: the INCR times out
        try:
            result = await cache.invalidate_generation(METHOD, PATTERN)
            assert result["generation"] == -1  # Redis could not take it ...
            assert await cache.get(KEY, method=METHOD) is None  # ... this process applies it
        finally:
            redis_process.resume()

        async def peer_dropped_it() -> bool:
            return await peer.get(KEY, method=METHOD) is None

        await eventually(peer_dropped_it)  # the retry reached Redis and was broadcast
        # at least once: the timed-out INCR may still have run when Redis woke (harmless)
        gen = int(await resources.redis(2).get(cache.generations.key(METHOD)))
        assert gen in (1, 2)
        assert cache.generations.local[METHOD] == peer.generations.local[METHOD] == gen
    finally:
        await cache.close()
        await peer.close()


async def test_a_hung_load_is_bounded_and_does_not_pin_the_key(resources: Resources) -> None:
    cache = tiered(resources, load_timeout=0.3)
    runs = 0
    hang = asyncio.Event()

    async def hung() -> bytes:
        nonlocal runs
        runs += 1
        await hang.wait()  # a query that never answers
        return b"never"

    with pytest.raises(TimeoutError):
        await cache.get_or_load(KEY, hung, method=METHOD)
    with pytest.raises(TimeoutError):  # a new load, not a join of the dead one
        await cache.get_or_load(KEY, hung, method=METHOD)
    assert runs == 2 and not cache._inflight
    await cache.close()


@pytest.mark.parametrize("finish_orphaned", [False, True])
async def test_a_load_without_waiters_is_cancelled_unless_configured(
    resources: Resources, finish_orphaned: bool
) -> None:
    cache = tiered(resources, finish_orphaned=finish_orphaned)
    started, gate = asyncio.Event(), asyncio.Event()
    outcome: list[str] = []

    async def slow() -> bytes:
        started.set()
        try:
            await gate.wait()
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise
        outcome.append("finished")
        return b"value"

    caller = asyncio.create_task(cache.get_or_load(KEY, slow, method=METHOD))
    await started.wait()
    caller.cancel()  # the only caller hits its deadline
    with pytest.raises(asyncio.CancelledError):
        await caller
    if finish_orphaned:
        gate.set()
        await eventually(lambda: _true_when(cache.get(KEY, method=METHOD), b"value"))
        assert outcome == ["finished"]
    else:
        await eventually(lambda: _true_when_sync(outcome == ["cancelled"]))
        assert counter(cache, cache.metrics.abandoned, "test", METHOD) == 1
    await cache.close()


async def _true_when(coro: Any, expected: Any) -> bool:
    return bool(await coro == expected)


async def _true_when_sync(value: bool) -> bool:
    return value


async def test_close_cancels_and_awaits_running_loads(resources: Resources) -> None:
    cache = tiered(resources, finish_orphaned=True)
    started = asyncio.Event()
    outcome: list[str] = []

    async def hung() -> bytes:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            outcome.append("cleaned up")
        return b""

    caller = asyncio.create_task(cache.get_or_load(KEY, hung, method=METHOD))
    await started.wait()
    await cache.close()
    assert outcome == ["cleaned up"] and not cache._inflight  # done by the time close returns
    with pytest.raises(asyncio.CancelledError):
        await caller


async def test_listener_has_its_own_connection_without_socket_timeout(
    redis_process: Any,
) -> None:
    res = Resources(settings(REDIS_URL=redis_process.url, REDIS_SOCKET_TIMEOUT_SECONDS=0.2))
    cache = GrpcCache.from_settings(res.settings, res).tiered
    peer = GrpcCache.from_settings(res.settings, res).tiered
    try:
        await cache.start()
        listener = cache.listener
        assert listener is not None and listener.subscriber is not listener.publisher
        kwargs = listener.subscriber.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] is None and kwargs["socket_keepalive"] is True
        for i in range(3):
            # idle for longer than the pool's socket timeout, then a message must still arrive
            await asyncio.sleep(0.5)
            await peer.invalidate_generation(f"/race.v1.Svc/M{i}", "v1:{race.v1.Svc/M}:*")
            await eventually(lambda i=i: _true_when_sync(f"/race.v1.Svc/M{i}" in _gens(cache)))
        assert listener.failures == 0 and listener.subscriptions == 1
    finally:
        await cache.close()
        await peer.close()
        await res.close()


def _gens(cache: TieredCache) -> dict[str, int]:
    return cache.generations.local


PEER = """
import asyncio, sys
sys.path.insert(0, {tests!r})
from conftest import settings
from grpcstack.cache import GrpcCache
from grpcstack.resources import Resources

async def main():
    res = Resources(settings(REDIS_URL={url!r}))
    cache = GrpcCache.from_settings(res.settings, res).tiered
    await cache.start()
    source = res.redis(5)
    lines = asyncio.Queue()
    loop = asyncio.get_running_loop()

    async def read_stdin():
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            await lines.put(line.strip())

    reader = asyncio.create_task(read_stdin())
    gate = asyncio.Event()

    async def slow():
        value = await source.get("source")
        print("loading", flush=True)
        await gate.wait()
        return value

    async def fresh():
        return await source.get("source")

    print("ready", flush=True)
    assert await lines.get() == "load"
    load = asyncio.create_task(cache.get_or_load({key!r}, slow, method={method!r}))
    assert await lines.get() == "release"
    gate.set()
    print("loaded", (await load)[1].decode(), flush=True)
    for _ in range(200):  # L1 may hold the old value until the broadcast arrives: bounded
        value = (await cache.get_or_load({key!r}, fresh, method={method!r}))[1].decode()
        if value == "new":
            break
        await asyncio.sleep(0.05)
    print("final", value, flush=True)
    reader.cancel()
    await cache.close()
    await res.close()

asyncio.run(main())
"""


@pytest.mark.parametrize("invalidation", ["method", "key", "before-load"])
async def test_two_processes_interleaving_load_and_invalidation_end_fresh(
    redis_process: Any, invalidation: str
) -> None:
    script = PEER.format(tests=str(ROOT / "tests"), url=redis_process.url, key=KEY, method=METHOD)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env=dict(os.environ),
    )
    assert proc.stdin is not None and proc.stdout is not None
    res = Resources(settings(REDIS_URL=redis_process.url))
    cache = GrpcCache.from_settings(res.settings, res).tiered
    source = Source(res)

    async def line() -> str:
        assert proc.stdout is not None
        return (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()

    async def send(text: str) -> None:
        assert proc.stdin is not None
        proc.stdin.write(text.encode() + b"\n")
        await proc.stdin.drain()

    try:
        await cache.start()
        await source.write(b"old")
        assert await line() == "ready"
        if invalidation == "before-load":  # the ordinary order: nothing is racing
            await source.write(b"new")
            await cache.invalidate_generation(METHOD, PATTERN)
        await send("load")
        assert await line() == "loading"
        if invalidation != "before-load":
            await source.write(b"new")
            if invalidation == "method":
                await cache.invalidate_generation(METHOD, PATTERN)
            else:
                await cache.delete(KEY, method=METHOD)
        await send("release")
        expected_load = "new" if invalidation == "before-load" else "old"
        assert await line() == f"loaded {expected_load}"
        assert await line() == "final new"
        got = await cache.get_or_load(KEY, source.loader(), method=METHOD)
        assert got == (KIND_VALUE, b"new")  # no stale value reached the shared tier
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        await cache.close()
        await res.close()


async def test_an_unknown_generation_bypasses_the_cache(
    resources: Resources, redis_process: Any
) -> None:
    old_era = tiered(resources)
    await old_era.set(KEY, b"stale", method=METHOD)  # written at generation 0 ...
    await resources.redis(2).incr(old_era.generations.key(METHOD))  # ... then invalidated
    fresh = tiered(resources)  # a process that has not read the generation yet
    source = Source(resources)
    await source.write(b"new")
    value = await resources.redis(5).get("source")

    async def load() -> bytes:
        return bytes(value)

    redis_process.pause()  # its generation read times out: it must not guess 0
    try:
        assert await fresh.get_or_load(KEY, load, method=METHOD) == (KIND_VALUE, b"new")
        assert counter(fresh, fresh.metrics.errors, "test", METHOD, "generation") == 1
        assert len(fresh.tiers[0].cache) == 0  # nothing was written under a guessed number
    finally:
        redis_process.resume()
    assert await fresh.get_or_load(KEY, load, method=METHOD) == (KIND_VALUE, b"new")
    assert await fresh.generations.current(METHOD) == 1
    await old_era.close()
    await fresh.close()
