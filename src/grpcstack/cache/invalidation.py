"""Invalidation for TieredCache: one key (a tombstone in Redis), a method (its generation moves
on), a glob (SCAN + UNLINK, best effort), and what arrives from other processes over pub/sub."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import TYPE_CHECKING, Any

from .envelope import KIND_TOMBSTONE, wrap

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from .generations import Generations
    from .listener import InvalidationListener
    from .memory import LRUMemoryCache
    from .metrics import CacheMetrics
    from .tier import Tier

log = logging.getLogger("grpcstack.cache")


class Invalidation:
    """Mixed into TieredCache, which provides these:"""

    tiers: list[Tier]
    service: str
    metrics: CacheMetrics
    generations: Generations
    listener: InvalidationListener | None
    tombstone_ttl: float
    clock: Callable[[], float]
    _l1: LRUMemoryCache | None
    _l2: Tier | None
    _epoch: int
    _patterns: dict[str, str]  # method -> the glob of its local entries, from invalidations

    if TYPE_CHECKING:

        def full_key(self, key: str, gen: int = 0) -> str: ...
        def full_pattern(self, pattern: str) -> str: ...
        def _bump_epoch(self, method: str) -> None: ...
        async def _timed(self, tier: Tier, op: str, coro: Awaitable[Any]) -> Any: ...

    async def delete(self, key: str, *, method: str = "") -> None:
        """Drop one key everywhere; in L2 a tombstone keeps in-flight loads from rewriting it."""
        gen = await self.generations.current(method)
        full = self.full_key(key, self.generations.best_known(method) if gen is None else gen)
        self._bump_epoch(method)
        for tier in reversed(self.tiers):
            try:
                if tier is self._l2:
                    tombstone = wrap(uuid.uuid4().hex.encode(), self.clock(), KIND_TOMBSTONE)
                    op = tier.cache.set(full, tombstone, ttl=self.tombstone_ttl)
                else:
                    op = tier.cache.delete(full)
                await self._timed(tier, "delete", op)
            except Exception as exc:
                self.metrics.child(self.metrics.errors, self.service, method, tier.name).inc()
                log.warning("cache delete failed on %s: %r", tier.name, exc)
        if self.listener is not None:
            await self.listener.publish(op="del", key=full, method=method)

    async def invalidate_generation(self, method: str, pattern: str) -> dict[str, int]:
        """Move ``method`` to a new generation; ``pattern`` (a glob relative to the namespace)
        drops the old entries from the local tiers now rather than by TTL."""
        self._bump_epoch(method)
        result: dict[str, int] = {}
        try:
            result["generation"] = await self.generations.bump(method)
        except Exception as exc:  # applied locally now, in Redis on the listener's reconnect
            tier = self._l2.name if self._l2 is not None else ""
            self.metrics.child(self.metrics.errors, self.service, method, tier).inc()
            result["generation"] = -1
            log.warning("cache generation bump failed for %s: %r", method, exc)
        result.update(await self._drop_matching(self.full_pattern(pattern), method))
        self._patterns[method] = pattern
        await self._announce_generation(method, self.generations.local[method])
        return result

    async def _announce_generation(self, method: str, gen: int) -> None:
        if self.listener is not None:
            pattern = self._patterns.get(method, "")
            await self.listener.publish(op="gen", method=method, gen=gen, pattern=pattern)

    async def _drop_matching(self, full_pattern: str, method: str) -> dict[str, int]:
        deleted: dict[str, int] = {}
        for tier in reversed(self.tiers):
            if tier is self._l2:
                continue  # unreachable by their generation; Redis expires them
            try:
                result = tier.cache.delete_matching(full_pattern)
                if asyncio.iscoroutine(result):
                    result = await result
                deleted[tier.name] = int(result)
            except Exception as exc:
                self.metrics.child(self.metrics.errors, self.service, method, tier.name).inc()
                deleted[tier.name] = -1
                log.warning("cache invalidation failed on %s: %r", tier.name, exc)
        return deleted

    async def invalidate(self, pattern: str, *, method: str = "") -> dict[str, int]:
        """Delete every key matching a glob (relative to the namespace) on every tier, with
        SCAN + UNLINK in Redis. Best effort: prefer invalidate_generation, which is atomic."""
        full = self.full_pattern(pattern)
        self._epoch += 1
        deleted: dict[str, int] = {}
        if self._l2 is not None:
            try:
                deleted[self._l2.name] = int(await self._l2.cache.delete_matching(full))
            except Exception as exc:
                self.metrics.child(self.metrics.errors, self.service, method, self._l2.name).inc()
                deleted[self._l2.name] = -1
                log.warning("cache invalidation failed on %s: %r", self._l2.name, exc)
        deleted.update(await self._drop_matching(full, method))
        if self.listener is not None:
            await self.listener.publish(op="glob", key=full)
        return deleted

    # --- cross-process --------------------------------------------------------------------

    def _on_message(self, data: dict[str, Any]) -> None:
        op = data.get("op")
        method = str(data.get("method", ""))
        l1 = self._l1
        if op == "gen":
            self.generations.observe(method, int(data["gen"]))
            self._bump_epoch(method)
            if l1 is not None and data.get("pattern"):
                l1.delete_matching(self.full_pattern(str(data["pattern"])))
        elif op == "del":
            self._bump_epoch(method)
            if l1 is not None:
                l1.delete_nowait(str(data["key"]))
        elif op == "glob":
            self._epoch += 1
            if l1 is not None:
                l1.delete_matching(str(data["key"]))

    async def _on_subscribed(self) -> None:
        """Messages may have been missed before this (re)subscription: start L1 over."""
        self._epoch += 1
        if self._l1 is not None:
            self._l1.clear_nowait()
        await self.generations.refresh()
