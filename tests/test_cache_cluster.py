"""The versioned cache's Redis side on a real three-node Redis Cluster: the compare-and-set
script declares both of its keys, which share the method's hash tag."""

from __future__ import annotations

import asyncio
from pathlib import Path

from grpcstack.cache import LRUMemoryCache, Tier, TieredCache
from grpcstack.cache.envelope import KIND_VALUE
from grpcstack.cache.redis import SharedRedisCache

METHODS = [f"/cluster.v1.Svc/M{i}" for i in range(6)]  # spread over the slots


async def test_versioned_cache_on_a_real_redis_cluster(tmp_path: Path) -> None:
    from redis.asyncio.cluster import RedisCluster as ClusterClient
    from redis.crc import key_slot
    from redis_cluster import RedisCluster

    cluster = RedisCluster(tmp_path)
    cluster.start()
    client = ClusterClient(host="127.0.0.1", port=cluster.ports[0])
    try:

        def cache() -> TieredCache:
            return TieredCache(
                [
                    Tier("l1", LRUMemoryCache(100), 300),
                    Tier("l2", SharedRedisCache(client), 3600, 5),
                ],
                service="test",
                namespace="c",
            )

        a, b = cache(), cache()
        keys = {m: f"v1:{{{m.strip('/')}}}:anon:k" for m in METHODS}
        slots = {key_slot(a.generations.key(m).encode()) for m in METHODS}
        assert len(slots) > 1  # the methods really are spread over the cluster
        for m, key in keys.items():
            assert key_slot(a.generations.key(m).encode()) == key_slot(a.full_key(key).encode())
            assert await a.get_or_load(key, _value(b"v0"), method=m) == (KIND_VALUE, b"v0")
            assert await b.get(key, method=m) == b"v0"  # from L2, through the cluster
        m0, m1 = METHODS[0], METHODS[1]
        racing = {m: keys[m].replace(":k", ":racing") for m in (m0, m1)}
        gate = asyncio.Event()
        started = {m: asyncio.Event() for m in (m0, m1)}

        def slow(m: str):  # type: ignore[no-untyped-def]
            async def load() -> bytes:
                started[m].set()
                await gate.wait()
                return b"stale"

            return load

        loads = [asyncio.create_task(a.get_or_load(racing[m], slow(m), method=m)) for m in started]
        async with asyncio.timeout(30):
            for event in started.values():
                await event.wait()  # both loads have looked up (and missed) ...
        await b.invalidate_generation(m0, "none")  # ... then the invalidations land ...
        await b.delete(racing[m1], method=m1)
        gate.set()
        await asyncio.gather(*loads)
        # ... were refused by the script on whichever node holds the method's slot
        assert a.metrics.child(a.metrics.stale_writes, "test", m0)._value.get() == 1
        assert a.metrics.child(a.metrics.stale_writes, "test", m1)._value.get() == 1
        await a.generations.refresh()  # MGET would be CROSSSLOT here; a pipeline of GETs is not
        for m in (m0, m1):
            assert await a.get_or_load(racing[m], _value(b"fresh"), method=m) == (
                KIND_VALUE,
                b"fresh",
            )
    finally:
        await client.aclose()
        cluster.stop()


def _value(value: bytes):  # type: ignore[no-untyped-def]
    async def load() -> bytes:
        return value

    return load
