"""L2: an aiocache RedisCache on the server's shared Redis pool (not a pool per cache).

aiocache 0.12's RedisCache builds its own pool, writes with setex (deprecated on redis-py 8),
clears with KEYS and, without a namespace, FLUSHDB. This backend borrows the Resources client,
writes ``SET key value PX ms``, invalidates with SCAN + UNLINK only, and never closes the client.
Given the Resources' ``MultiplexedRedis`` (``fast``), the per-call commands (the tiered cache's
read and its guarded write) go over that one pipelined connection; the rest stays on the pool.

Versioned writes go through one Lua script that declares both of its keys (the method's
generation counter and the entry, which share a ``{hash tag}`` so the script also runs on Redis
Cluster): the entry is written only if the generation is still the one the load began under and
no tombstone newer than the load's own lookup sits on the key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiocache.backends.redis import RedisBackend
from aiocache.base import BaseCache

from .envelope import HEADER_LEN, KIND_TOMBSTONE, RawBytesSerializer

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from ..redis_multiplexed import MultiplexedRedis


# KEYS: generation counter, entry; ARGV: expected generation, tombstone id seen at lookup ("" for
# none), blob, ttl in ms. Returns {written (0/1), current generation}.
_CAS = f"""
local gen = tonumber(redis.call('GET', KEYS[1]) or '0')
if gen ~= tonumber(ARGV[1]) then return {{0, gen}} end
local cur = redis.call('GET', KEYS[2])
if cur and string.byte(cur, {HEADER_LEN}) == {KIND_TOMBSTONE}
   and string.sub(cur, {HEADER_LEN + 1}) ~= ARGV[2] then
  return {{0, gen}}
end
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
return {{1, gen}}
"""


class SharedRedisCache(RedisBackend, BaseCache):  # type: ignore[misc]
    NAME = "shared_redis"

    def __init__(
        self,
        client: Redis,
        *,
        fast: MultiplexedRedis | None = None,
        scan_count: int = 1000,
        unlink_batch: int = 500,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("timeout", None)  # the tiered cache enforces its own per-tier budget
        kwargs.setdefault("serializer", RawBytesSerializer())
        BaseCache.__init__(self, **kwargs)
        self.client = client
        self.fast = fast
        self.scan_count = scan_count
        self.unlink_batch = unlink_batch
        self._cas_script: Any = fast.script(_CAS) if fast else client.register_script(_CAS)

    async def fetch(self, key: str) -> bytes | None:
        """The stored entry, as the tiered cache reads it (no aiocache wrappers: no namespace,
        plugins or serializer apply to its keys and blobs)."""
        if self.fast is not None:
            return await self.fast.get(key)
        return await self.client.get(key)  # type: ignore[no-any-return]

    async def _get(self, key: str, encoding: str | None = None, _conn: Any = None) -> Any:
        value = await self.fetch(key)  # aiocache's, on whichever connection fetch uses
        return value.decode(encoding) if encoding and value is not None else value

    async def cas_set(
        self, gen_key: str, key: str, gen: int, tombstone: bytes, blob: bytes, ttl: float
    ) -> tuple[bool, int]:
        """Write ``blob`` unless the generation moved or a newer tombstone is on the key."""
        written, current = await self._cas_script(
            keys=[gen_key, key], args=[gen, tombstone, blob, max(1, int(ttl * 1000))]
        )
        return bool(int(written)), int(current)

    async def generations(self, keys: list[str]) -> list[int]:
        # one GET per key in a pipeline, not MGET: on a cluster the keys live in different slots
        async with self.client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.get(key)
            values = await pipe.execute()
        return [int(v) if v is not None else 0 for v in values]

    async def bump(self, gen_key: str) -> int:
        return int(await self.client.incr(gen_key))

    async def _set(
        self,
        key: str,
        value: Any,
        ttl: float | None = None,
        _cas_token: Any = None,
        _conn: Any = None,
    ) -> Any:
        if _cas_token is not None:
            return await self._cas(key, value, _cas_token, ttl=ttl, _conn=_conn)
        if ttl is None:
            return await self.client.set(key, value)
        return await self.client.set(key, value, px=max(1, int(ttl * 1000)))

    async def set_many(self, rows: list[tuple[str, bytes, float]]) -> None:
        """One pipelined round trip for several (key, value, ttl) rows."""
        async with self.client.pipeline(transaction=False) as pipe:
            for key, value, ttl in rows:
                pipe.set(key, value, px=max(1, int(ttl * 1000)))
            await pipe.execute()

    async def delete_matching(self, pattern: str) -> int:
        """SCAN MATCH (cursor based, never KEYS) + UNLINK in batches."""
        deleted = 0
        batch: list[Any] = []
        async for key in self.client.scan_iter(match=pattern, count=self.scan_count):
            batch.append(key)
            if len(batch) >= self.unlink_batch:
                deleted += await self.client.unlink(*batch)
                batch.clear()
        if batch:
            deleted += await self.client.unlink(*batch)
        return deleted

    async def _clear(self, namespace: str | None = None, _conn: Any = None) -> bool:
        namespace = namespace if namespace is not None else self.namespace
        if not namespace:
            raise ValueError("refusing to FLUSHDB: clear() needs a namespace")
        await self.delete_matching(f"{namespace}*")
        return True

    async def _close(self, *args: Any, _conn: Any = None, **kwargs: Any) -> None:
        """The client belongs to the server's Resources."""
