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
from grpcstack.cache.envelope import KIND_NEGATIVE, KIND_VALUE, unwrap
from grpcstack.cache.redis import SharedRedisCache
from grpcstack.duckdb_store import DuckDBStore
from grpcstack.resources import Resources


def test_lru_bound_and_lazy_expiry() -> None:
    lru = LRUMemoryCache(maxsize=3)
    for key in "abcd":
        lru.set_nowait(key, key.upper(), ttl=60)
    assert len(lru) == 3 and lru.get_nowait("a") is None and lru.evictions == 1
    assert lru.get_nowait("b") == "B"  # b is now most recently used
    lru.set_nowait("e", "E", ttl=60)
    assert lru.get_nowait("c") is None and lru.get_nowait("b") == "B"
    lru.set_nowait("short", "S", ttl=0.05)
    time.sleep(0.06)
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


@pytest.fixture
async def resources(redis_process: Any) -> Any:
    res = Resources(settings(REDIS_URL=redis_process.url))
    yield res
    await res.close()


def two_tier(
    resources: Resources, l1_ttl: float = 300, l2_ttl: float = 3600, **kwargs: Any
) -> TieredCache:
    return TieredCache(
        [
            Tier("l1", LRUMemoryCache(100), l1_ttl),
            Tier("l2", SharedRedisCache(resources.redis(2)), l2_ttl, 0.5),
        ],
        service="test",
        namespace="t",
        pubsub=resources.redis(2),
        **kwargs,
    )


async def test_promotion_from_l2_caps_ttl_by_remaining_life(resources: Resources) -> None:
    cache = two_tier(resources)
    writer = two_tier(resources)  # another process's view: L2 only is shared
    await writer.set("k", b"value", ttl=1.0)
    assert await cache.get("k") == b"value"  # L1 miss, L2 hit, promoted
    hits = cache.metrics.child(cache.metrics.hits, "test", "", "l2")._value.get()
    assert hits == 1
    l1 = cache.tiers[0].cache
    assert isinstance(l1, LRUMemoryCache) and l1.get_nowait("t:k:g0") is not None
    deadline = l1._data["t:k:g0"][0]
    assert deadline - time.monotonic() <= 1.0  # not L1's 300 s
    await asyncio.sleep(1.1)
    assert await cache.get("k") is None  # expired in both tiers
    raw = await resources.redis(2).get("t:k:g0")
    assert raw is None


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
    cache = two_tier(resources, negative_ttl=0.3)
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
    await asyncio.sleep(0.35)
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


async def test_glob_invalidation_uses_scan_on_every_tier(resources: Resources) -> None:
    cache = two_tier(resources)
    for i in range(50):
        await cache.set(f"m:A:{i}", b"x")
        await cache.set(f"m:B:{i}", b"y")
    deleted = await cache.invalidate("m:A:*")
    assert deleted == {"l2": 50, "l1": 50}
    assert await cache.get("m:A:3") is None and await cache.get("m:B:3") == b"y"


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
