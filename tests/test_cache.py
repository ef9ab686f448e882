"""The tiered cache against a real Redis and a DuckDB file: promotion, TTL capping, the LRU
bound, single-flight, negative caching, invalidation (also across two processes), keys."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, settings

from gen.common.v1 import Metadata
from gen.ocr.v1 import OcrRequest
from grpcstack.cache import GrpcCache, LRUMemoryCache, Tier, TieredCache, request_key
from grpcstack.cache.duckdb import DuckDBCache
from grpcstack.cache.envelope import KIND_NEGATIVE, KIND_VALUE, unwrap, wrap
from grpcstack.cache.redis import SharedRedisCache
from grpcstack.duckdb_store import DuckDBStore
from grpcstack.resources import Resources


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_lru_bound_and_lazy_expiry() -> None:
    clock = FakeClock()
    lru = LRUMemoryCache(maxsize=3, clock=clock)
    for key in "abcd":
        lru.set_nowait(key, key.upper(), ttl=60)
    assert len(lru) == 3 and lru.get_nowait("a") is None and lru.evictions == 1
    assert lru.get_nowait("b") == "B"  # b is now most recently used
    lru.set_nowait("e", "E", ttl=60)
    assert lru.get_nowait("c") is None and lru.get_nowait("b") == "B"
    lru.set_nowait("short", "S", ttl=0.05)
    clock.now += 0.049
    assert lru.get_nowait("short") == "S"
    clock.now += 0.001
    assert lru.get_nowait("short") is None and lru.expirations == 1
    assert lru.delete_matching("[be]") == 2


def test_keys_are_canonical_and_salted() -> None:
    a = OcrRequest(private_image_path="x.png", options=Metadata(data={"a": "1", "b": "2"}))
    b = OcrRequest(private_image_path="x.png", options=Metadata(data={"b": "2", "a": "1"}))
    assert bytes(a) != bytes(b)  # betterproto2 keeps insertion order
    method = "/ocr.v1.OCRService/ExtractText"
    assert request_key(method, a) == request_key(method, b)
    assert request_key(method, a, schema="2") != request_key(method, a)
    assert request_key(method, a, extra=["u=alice"]) != request_key(method, a, extra=["u=bob"])
    key = request_key(method, a, extra=["u=a:b*"])
    assert key.startswith("v1:{ocr.v1.OCRService/ExtractText}:u=a%3Ab%2A:")
    assert key.count(":") == 3


@pytest.fixture(params=["multiplexed", "pool"])
async def resources(redis_process: Any, request: Any) -> Any:
    """L2 reads and guarded writes over the multiplexed connection (the default), or the pool."""
    res = Resources(
        settings(REDIS_URL=redis_process.url, REDIS_MULTIPLEXED=request.param == "multiplexed")
    )
    yield res
    await res.close()


def two_tier(
    resources: Resources,
    l1_ttl: float = 300,
    l2_ttl: float = 3600,
    clock: FakeClock | None = None,
    **kwargs: Any,
) -> TieredCache:
    if clock is not None:  # one injected clock for both: L1 deadlines and hard expiries
        kwargs["clock"] = clock
    return TieredCache(
        [
            Tier("l1", LRUMemoryCache(100, **({"clock": clock} if clock else {})), l1_ttl),
            Tier(
                "l2",
                SharedRedisCache(resources.redis(2), fast=resources.redis_multiplexed(2)),
                l2_ttl,
                0.5,
            ),
        ],
        service="test",
        namespace="t",
        pubsub=resources.redis(2),
        **kwargs,
    )


async def test_promotion_from_l2_caps_ttl_by_remaining_life(resources: Resources) -> None:
    clock = FakeClock()
    cache = two_tier(resources, clock=clock)
    writer = two_tier(resources, clock=clock)  # another process's view: L2 only is shared
    await writer.set("k", b"value", ttl=10.0)
    assert 0 < await resources.redis(2).pttl("t:k:g0") <= 10_000  # Redis expires it too
    clock.now += 6.0
    assert await cache.get("k") == b"value"  # L1 miss, L2 hit, promoted
    hits = cache.metrics.child(cache.metrics.hits, "test", "", "l2")._value.get()
    assert hits == 1
    l1 = cache.tiers[0].cache
    assert isinstance(l1, LRUMemoryCache) and l1.get_nowait("t:k:g0") is not None
    assert l1._data["t:k:g0"][0] - clock.now == pytest.approx(4.0)  # what is left, not 300 s
    clock.now += 3.9
    assert await cache.get("k") == b"value"
    clock.now += 0.1
    assert await cache.get("k") is None  # expired in both tiers (L2's envelope says so)


async def test_single_flight_and_cancellation(resources: Resources) -> None:
    cache = two_tier(resources)
    runs = 0
    release = asyncio.Event()

    async def loader() -> bytes:
        nonlocal runs
        runs += 1
        await release.wait()
        return b"loaded"

    callers = [asyncio.create_task(cache.get_or_load("sf", loader)) for _ in range(100)]
    coalesced = cache.metrics.child(cache.metrics.coalesced, "test", "")
    async with asyncio.timeout(10):
        while coalesced._value.get() < 99:  # every caller missed L1 and L2 and is waiting
            await asyncio.sleep(0.01)
    callers[0].cancel()  # a caller hitting its deadline does not cancel the shared load
    release.set()
    results = await asyncio.gather(*callers[1:])
    assert runs == 1
    assert all(r == (KIND_VALUE, b"loaded") for r in results)
    assert callers[0].cancelled()
    assert await cache.get("sf") == b"loaded"


async def test_loader_errors_are_not_cached_but_not_found_is(resources: Resources) -> None:
    clock = FakeClock()
    cache = two_tier(resources, clock=clock, negative_ttl=5.0)
    calls = 0

    async def failing() -> bytes:
        nonlocal calls
        calls += 1
        raise ConnectionError("source down")

    for _ in range(2):
        with pytest.raises(ConnectionError):
            await cache.get_or_load("err", failing)
    assert calls == 2

    async def missing() -> None:
        nonlocal calls
        calls += 1

    calls = 0
    assert (await cache.get_or_load("nf", missing))[0] == KIND_NEGATIVE
    assert (await cache.get_or_load("nf", missing))[0] == KIND_NEGATIVE
    assert calls == 1  # the second answer came from the negative entry
    clock.now += 4.99
    await cache.get_or_load("nf", missing)
    assert calls == 1
    clock.now += 0.01
    await cache.get_or_load("nf", missing)
    assert calls == 2


async def test_invalidation_during_a_load_keeps_the_stale_result_out(
    resources: Resources,
) -> None:
    cache = two_tier(resources)
    started, release = asyncio.Event(), asyncio.Event()

    async def slow() -> bytes:
        started.set()
        await release.wait()
        return b"stale"

    task = asyncio.create_task(cache.get_or_load("race", slow))
    await started.wait()
    await cache.invalidate("race*")
    release.set()
    assert await task == (KIND_VALUE, b"stale")  # the caller still gets its answer
    assert await cache.get("race") is None  # but it was not cached


@pytest.fixture
async def strict_resources(tmp_path: Path) -> Any:
    """A redis-server on which KEYS, FLUSHDB and FLUSHALL do not exist (renamed away)."""
    from redis_process import RedisProcess

    renamed = []
    for command in ("KEYS", "FLUSHDB", "FLUSHALL"):
        renamed += ["--rename-command", command, f"{command}_disabled_by_test"]
    proc = RedisProcess(tmp_path, renamed)
    proc.start()
    res = Resources(settings(REDIS_URL=proc.url))
    try:
        yield res
    finally:
        await res.close()
        proc.stop()


async def test_glob_invalidation_uses_scan_never_keys_or_flushdb(
    strict_resources: Resources,
) -> None:
    from redis.exceptions import ResponseError

    redis = strict_resources.redis(2)
    for command in ("KEYS", "FLUSHDB", "FLUSHALL"):  # the server really refuses them
        with pytest.raises(ResponseError, match="unknown command"):
            await redis.execute_command(command, *(["*"] if command == "KEYS" else []))
    cache = two_tier(strict_resources)
    for i in range(50):
        await cache.set(f"m:A:{i}", b"x")
        await cache.set(f"m:B:{i}", b"y")
    deleted = await cache.invalidate("m:A:*")
    assert deleted == {"l2": 50, "l1": 50}  # -1 for l2 had it sent KEYS
    assert await cache.get("m:A:3") is None and await cache.get("m:B:3") == b"y"
    l2 = cache.tiers[1].cache
    assert await l2.clear(namespace="t:m:B") is True  # aiocache's clear: SCAN too
    assert await redis.dbsize() == 0
    with pytest.raises(ValueError, match="refusing to FLUSHDB"):
        await l2.clear()


async def test_values_are_envelope_plus_protobuf_bytes_never_pickle(resources: Resources) -> None:
    clock = FakeClock()
    cache = two_tier(resources, clock=clock)
    message = OcrRequest(private_image_path="x.png")
    await cache.set("p", bytes(message), ttl=60)
    raw = await resources.redis(2).get("t:p:g0")
    assert raw == wrap(bytes(message), clock.now + 60, KIND_VALUE)  # byte for byte
    assert not raw.startswith(b"\x80")  # no pickle protocol header
    assert OcrRequest.parse(unwrap(raw)[2]) == message
    with pytest.raises(TypeError, match="cache values are bytes"):
        await cache.tiers[1].cache.set("t:obj", {"a": 1})  # objects are refused, not pickled


async def test_a_hung_tier_costs_its_timeout_not_the_call(redis_process: Any) -> None:
    res = Resources(
        settings(
            REDIS_URL=redis_process.url,
            REDIS_SOCKET_TIMEOUT_SECONDS=30,  # only the tier's own budget can end a wait
            GRPC_CACHE_TIER_TIMEOUT_SECONDS=0.2,
        )
    )
    cache = GrpcCache.from_settings(res.settings, res).tiered
    try:
        assert cache.tiers[1].timeout == 0.2
        await cache.set("h", b"v")
        cache.tiers[0].cache.clear_nowait()  # force the next read to L2
        redis_process.pause()
        started = time.monotonic()
        got = await cache.get_or_load("h", _const(b"loaded"))
        assert got == (KIND_VALUE, b"loaded")
        assert time.monotonic() - started < 10  # far below the 30 s socket timeout
        errors = cache.metrics.child(cache.metrics.errors, "grpc-service", "", "l2")._value.get()
        assert errors >= 2  # the read and the write-back both gave up
    finally:
        redis_process.resume()
        await cache.close()
        await res.close()


async def test_tier_and_l1_metrics(resources: Resources) -> None:
    from prometheus_client import CollectorRegistry

    from grpcstack.cache.metrics import CacheMetrics

    registry = CollectorRegistry()
    cache = TieredCache(
        [
            Tier("l1", LRUMemoryCache(2), 300),
            Tier(
                "l2",
                SharedRedisCache(resources.redis(2), fast=resources.redis_multiplexed(2)),
                3600,
                0.5,
            ),
        ],
        service="svc",
        namespace="mt",
        metrics=CacheMetrics(registry),
    )
    for key in "abc":  # c evicts a from L1
        await cache.get_or_load(key, _const(key.encode()), method="/m")
    await cache.get_or_load("c", _const(b""), method="/m")  # L1 hit
    await cache.get_or_load("a", _const(b""), method="/m")  # L1 miss, L2 hit

    def sample(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    layer = {"service": "svc", "method": "/m"}
    assert sample("grpcstack_cache_hits_total", **layer, layer="l1") == 1
    assert sample("grpcstack_cache_hits_total", **layer, layer="l2") == 1
    assert sample("grpcstack_cache_misses_total", **layer, layer="l1") == 4
    assert sample("grpcstack_cache_misses_total", **layer, layer="l2") == 3
    assert sample("grpcstack_cache_loads_total", **layer) == 3
    assert sample("grpcstack_cache_lookups_total", **layer, result="hit") == 2
    assert sample("grpcstack_cache_l1_entries") == 2
    assert sample("grpcstack_cache_l1_evictions") == 2  # a, then b when a came back
    assert sample("grpcstack_cache_tier_seconds_count", layer="l2", op="get") == 4


async def test_failing_tier_is_skipped_and_counted(
    resources: Resources, redis_process: Any
) -> None:
    cache = two_tier(resources)
    await cache.set("f", b"v")
    redis_process.stop()
    assert await cache.get("f") == b"v"  # from L1
    got = await cache.get_or_load("g", _const(b"loaded"))
    assert got == (KIND_VALUE, b"loaded")
    errors = cache.metrics.child(cache.metrics.errors, "test", "", "l2")._value.get()
    assert errors >= 2
    redis_process.start()


def _const(value: bytes) -> Any:
    async def load() -> bytes:
        return value

    return load


async def test_duckdb_l3_file(tmp_path: Path) -> None:
    store = DuckDBStore(str(tmp_path / "cache.duckdb"))
    try:
        l3 = DuckDBCache(store)
        cache = TieredCache(
            [Tier("l1", LRUMemoryCache(10), 300), Tier("l3", l3, 86400, 2.0)],
            service="test",
            namespace="d",
        )
        for i in range(20):
            await cache.set(f"bars:{i}", b"ohlcv" * 100)
        await l3.flush()
        assert l3.batches <= 3  # twenty sets, batched into few statements
        rows = await store.query("SELECT count(*) FROM grpc_cache")
        assert rows == [(20,)]
        # L1 holds only 10; the rest comes back from DuckDB and is promoted
        assert await cache.get("bars:0") == b"ohlcv" * 100
        hits = cache.metrics.child(cache.metrics.hits, "test", "", "l3")._value.get()
        assert hits == 1
        raw = await l3.get("d:bars:0:g0")
        assert unwrap(raw)[2] == b"ohlcv" * 100
        # L1 kept bars:11..19 (bars:10 was evicted when bars:0 was promoted)
        assert (await cache.invalidate("bars:1*")) == {"l3": 11, "l1": 9}
    finally:
        await store.close()


async def test_from_settings_builds_the_configured_tiers(
    redis_process: Any, tmp_path: Path
) -> None:
    res = Resources(
        settings(
            REDIS_URL=redis_process.url,
            GRPC_CACHE_L3_ENABLED=True,
            DUCKDB_PATH=str(tmp_path / "l3.duckdb"),
        )
    )
    try:
        cache = GrpcCache.from_settings(res.settings, res)
        assert [t.name for t in cache.tiered.tiers] == ["l1", "l2", "l3"]
        assert [t.ttl for t in cache.tiered.tiers] == [300, 3600, 86400]
        plain = GrpcCache.from_settings(settings(), Resources(settings()))
        assert [t.name for t in plain.tiered.tiers] == ["l1"]
    finally:
        await res.close()


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
    await cache.set("shared:1", b"peer value")
    l1 = cache.tiers[0].cache
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for _ in range(50):
        if l1.get_nowait(cache.full_key("shared:1")) is None:
            break
        await asyncio.sleep(0.05)
    print("dropped" if l1.get_nowait(cache.full_key("shared:1")) is None else "kept", flush=True)
    await cache.close()
    await res.close()

asyncio.run(main())
"""


async def test_invalidation_reaches_another_process(redis_process: Any) -> None:
    script = PEER.format(tests=str(ROOT / "tests"), url=redis_process.url)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env=dict(os.environ),
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert (await asyncio.wait_for(proc.stdout.readline(), 30)).strip() == b"ready"
        res = Resources(settings(REDIS_URL=redis_process.url))
        try:
            cache = GrpcCache.from_settings(res.settings, res).tiered
            assert await cache.get("shared:1") == b"peer value"  # via L2
            await cache.invalidate("shared:*")
        finally:
            await res.close()
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
        assert (await asyncio.wait_for(proc.stdout.readline(), 30)).strip() == b"dropped"
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
