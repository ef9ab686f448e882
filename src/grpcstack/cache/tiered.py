"""TieredCache: L1 memory -> L2 Redis -> L3 DuckDB -> the loader (MongoDB or any source).

* get: tiers top-down; a hit in tier i is promoted to the tiers above it with a TTL capped by the
  value's remaining life (the hard expiry travels with the value).
* set writes through; delete and glob invalidation run bottom-up on every tier (so a concurrent
  reader cannot promote the old value back into a tier already cleared) and are broadcast over
  Redis pub/sub so other processes drop their L1 copies.
* get_or_load is single-flight: N concurrent misses on one key run the loader once, in its own
  task, so a caller cancelled by its deadline does not cancel the load for the others. Loader
  errors are not cached; a "not found" is, briefly (negative caching); an invalidation during a
  load keeps its (possibly stale) result out of the tiers.
* a tier that fails or exceeds its time budget is skipped and counted, never fails the call.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

from aiocache.base import BaseCache

from .envelope import KIND_NEGATIVE, KIND_VALUE, unwrap, wrap
from .memory import LRUMemoryCache
from .metrics import CacheMetrics

log = logging.getLogger("grpcstack.cache")

#: returns the value's bytes, or None for "not found" (cached for the negative TTL)
Loader = Callable[[], Awaitable[bytes | None]]


@dataclass
class Tier:
    name: str  # metric label: l1, l2, l3
    cache: BaseCache
    ttl: float  # seconds this tier keeps a value at most
    timeout: float | None = None  # per-operation budget (remote tiers)


class TieredCache:
    def __init__(
        self,
        tiers: list[Tier],
        *,
        service: str,
        namespace: str,
        metrics: CacheMetrics | None = None,
        pubsub: Any = None,
        negative_ttl: float = 5.0,
    ) -> None:
        if not tiers:
            raise ValueError("a cache needs at least one tier")
        self.tiers = tiers
        self.service = service
        self.namespace = namespace
        self.metrics = metrics or CacheMetrics()
        self.negative_ttl = negative_ttl
        self.default_ttl = max(t.ttl for t in tiers)
        self._l1 = tiers[0].cache if isinstance(tiers[0].cache, LRUMemoryCache) else None
        self._inflight: dict[str, asyncio.Task[tuple[int, bytes]]] = {}
        self._epoch = 0  # bumped by every delete/invalidate, here or in another process
        self._pubsub = pubsub
        self.channel = f"{namespace}:invalidate"
        self.instance_id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._listener: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()

    def full_key(self, key: str) -> str:
        return f"{self.namespace}:{key}"

    def _select(self, names: Collection[str] | None) -> list[tuple[int, Tier]]:
        return [(i, t) for i, t in enumerate(self.tiers) if names is None or t.name in names]

    # --- one tier ---------------------------------------------------------------------

    async def _timed(self, tier: Tier, op: str, coro: Awaitable[Any]) -> Any:
        started = time.perf_counter()
        try:
            if tier.timeout is None:
                return await coro
            async with asyncio.timeout(tier.timeout):
                return await coro
        finally:
            self.metrics.child(self.metrics.latency, tier.name, op).observe(
                time.perf_counter() - started
            )

    async def _get_raw(self, i: int, tier: Tier, full: str) -> tuple[float, int, bytes] | None:
        if i == 0 and self._l1 is not None:
            return self._l1.get_nowait(full)  # type: ignore[no-any-return]
        raw = await self._timed(tier, "get", tier.cache.get(full))
        return None if raw is None else unwrap(raw)

    async def _put(
        self, i: int, tier: Tier, full: str, expiry: float, kind: int, payload: bytes, method: str
    ) -> None:
        ttl = min(tier.ttl, expiry - time.time())
        if ttl <= 0:
            return
        try:
            if i == 0 and self._l1 is not None:
                self._l1.set_nowait(full, (expiry, kind, payload), ttl)
                self.metrics.l1_size.set(len(self._l1))
                self.metrics.l1_evictions.set(self._l1.evictions)
            else:
                blob = wrap(payload, expiry, kind)
                await self._timed(tier, "set", tier.cache.set(full, blob, ttl=ttl))
        except Exception as exc:  # a tier must never fail the call
            self.metrics.child(self.metrics.errors, self.service, method, tier.name).inc()
            log.warning("cache set failed on %s for %s: %r", tier.name, full, exc)

    async def _write(
        self,
        tiers: list[tuple[int, Tier]],
        full: str,
        expiry: float,
        kind: int,
        payload: bytes,
        method: str,
    ) -> None:
        remote = []
        for i, tier in tiers:
            if i == 0:
                await self._put(i, tier, full, expiry, kind, payload, method)
            else:
                remote.append(self._put(i, tier, full, expiry, kind, payload, method))
        if remote:
            await asyncio.gather(*remote)

    # --- reads ---------------------------------------------------------------------------

    async def lookup(
        self, key: str, *, method: str = "", tiers: Collection[str] | None = None
    ) -> tuple[int, bytes] | None:
        """(kind, payload) from the first tier that has it, promoted upwards; None on a miss."""
        full = self.full_key(key)
        m = self.metrics
        selected = self._select(tiers)
        for pos, (i, tier) in enumerate(selected):
            try:
                entry = await self._get_raw(i, tier, full)
            except Exception as exc:
                m.child(m.errors, self.service, method, tier.name).inc()
                log.debug("cache get failed on %s: %r", tier.name, exc)
                continue
            if entry is None or entry[0] <= time.time():
                m.child(m.misses, self.service, method, tier.name).inc()
                continue
            m.child(m.hits, self.service, method, tier.name).inc()
            expiry, kind, payload = entry
            if pos:
                await self._write(selected[:pos], full, expiry, kind, payload, method)
            return kind, payload
        return None

    async def get(self, key: str, *, method: str = "") -> bytes | None:
        found = await self.lookup(key, method=method)
        return found[1] if found is not None and found[0] == KIND_VALUE else None

    async def set(
        self,
        key: str,
        value: bytes,
        ttl: float | None = None,
        *,
        method: str = "",
        tiers: Collection[str] | None = None,
        kind: int = KIND_VALUE,
    ) -> None:
        expiry = time.time() + (ttl if ttl is not None else self.default_ttl)
        await self._write(self._select(tiers), self.full_key(key), expiry, kind, value, method)

    async def get_or_load(
        self,
        key: str,
        loader: Loader,
        *,
        method: str = "",
        ttl: float | None = None,
        tiers: Collection[str] | None = None,
    ) -> tuple[int, bytes]:
        """(kind, payload): from a tier, or from ONE loader run shared by concurrent callers."""
        m = self.metrics
        found = await self.lookup(key, method=method, tiers=tiers)
        if found is not None:
            m.child(m.lookups, self.service, method, "hit").inc()
            return found
        m.child(m.lookups, self.service, method, "miss").inc()
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(
                self._load(key, loader, method, ttl, tiers)
            )
            self._inflight[key] = task
            task.add_done_callback(lambda t: self._load_done(key, t))
        else:
            m.child(m.coalesced, self.service, method).inc()
        # a cancelled caller stops waiting; the shared load goes on for the others
        return await asyncio.shield(task)

    def _load_done(self, key: str, task: asyncio.Task[Any]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved: no warning when every waiter has left

    async def _load(
        self,
        key: str,
        loader: Loader,
        method: str,
        ttl: float | None,
        tiers: Collection[str] | None,
    ) -> tuple[int, bytes]:
        epoch = self._epoch
        self.metrics.child(self.metrics.loads, self.service, method).inc()
        value = await loader()  # an exception propagates to every waiter and is not cached
        kind, payload = (KIND_NEGATIVE, b"") if value is None else (KIND_VALUE, value)
        if self._epoch != epoch:
            return kind, payload  # invalidated while loading: serve it, but do not keep it
        if kind == KIND_NEGATIVE:
            if self.negative_ttl > 0:
                await self.set(
                    key, b"", self.negative_ttl, method=method, tiers=tiers, kind=KIND_NEGATIVE
                )
        else:
            await self.set(key, payload, ttl, method=method, tiers=tiers)
        return kind, payload

    # --- invalidation ------------------------------------------------------------------

    async def delete(self, key: str, *, method: str = "") -> None:
        full = self.full_key(key)
        self._epoch += 1
        for tier in reversed(self.tiers):
            try:
                await self._timed(tier, "delete", tier.cache.delete(full))
            except Exception as exc:
                self.metrics.child(self.metrics.errors, self.service, method, tier.name).inc()
                log.warning("cache delete failed on %s: %r", tier.name, exc)
        await self._publish("del", full)

    async def invalidate(self, pattern: str, *, method: str = "") -> dict[str, int]:
        """Delete every key matching a glob (relative to the namespace) on every tier."""
        full = self.full_key(pattern)
        self._epoch += 1
        deleted: dict[str, int] = {}
        for tier in reversed(self.tiers):
            try:
                result = tier.cache.delete_matching(full)
                if asyncio.iscoroutine(result):
                    result = await result
                deleted[tier.name] = int(result)
            except Exception as exc:
                self.metrics.child(self.metrics.errors, self.service, method, tier.name).inc()
                deleted[tier.name] = -1
                log.warning("cache invalidation failed on %s: %r", tier.name, exc)
        await self._publish("glob", full)
        return deleted

    # --- cross-process L1 invalidation --------------------------------------------------------

    async def _publish(self, op: str, full: str) -> None:
        if self._pubsub is None:
            return
        message = json.dumps({"src": self.instance_id, "op": op, "key": full})
        try:
            await self._pubsub.publish(self.channel, message)
        except Exception as exc:  # peers' L1 entries then expire by their TTL
            log.warning("cache invalidation broadcast failed: %r", exc)

    async def start(self) -> None:
        if self._pubsub is None or self._listener is not None:
            return
        self._listener = asyncio.get_running_loop().create_task(self._listen())
        try:
            async with asyncio.timeout(2):
                await self._listening.wait()
        except TimeoutError:
            log.warning("cache invalidation channel not subscribed yet; retrying in background")

    def _drop_local(self, op: str, full: str) -> None:
        self._epoch += 1
        l1 = self.tiers[0].cache
        if isinstance(l1, LRUMemoryCache):
            if op == "del":
                l1.delete_nowait(full)
            else:
                l1.delete_matching(full)

    async def _listen(self) -> None:
        while True:
            pubsub = self._pubsub.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self._listening.set()
                async for message in pubsub.listen():
                    data = json.loads(message["data"])
                    if data.get("src") != self.instance_id:
                        self._drop_local(data["op"], data["key"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # reconnect; L1 TTLs bound the staleness meanwhile
                log.warning("cache invalidation listener failed (%r); resubscribing", exc)
                await asyncio.sleep(1)
            finally:
                try:
                    await pubsub.aclose()
                except Exception:
                    pass

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            try:
                await self._listener
            except asyncio.CancelledError:
                pass
            self._listener = None
        for tier in self.tiers:
            flush = getattr(tier.cache, "flush", None)
            if flush is not None:
                await flush()
