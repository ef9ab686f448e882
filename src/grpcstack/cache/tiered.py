"""TieredCache: L1 memory -> L2 Redis -> L3 DuckDB -> the loader (MongoDB or any source).

* Keys are versioned: ``<namespace>:<key>:g<generation>``, the generation being the method's
  counter (generations.py). Invalidating a method is one INCR; older entries are never read
  again. Deleting one key leaves a tombstone in L2 for longer than any load can run.
* get: tiers top-down; a hit in tier i is promoted to the tiers above it with a TTL capped by the
  value's remaining life (the hard expiry travels with the value).
* get_or_load is single-flight: N concurrent misses on one key run the loader once, in its own
  task, bounded by ``load_timeout``, cancelled when its last waiter leaves (unless
  ``finish_orphaned``) and at close. Its result reaches L2 through a compare-and-set that
  refuses it if the generation moved or a tombstone newer than the load's lookup is there (so a
  load begun before an invalidation, in any process, cannot write after it), and L1 only if no
  invalidation reached this process meanwhile.
* Loader errors are not cached; a ``Negative`` (not found) is, briefly.
* a tier that fails or exceeds its time budget is skipped and counted, never fails the call.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

from .envelope import KIND_NEGATIVE, KIND_TOMBSTONE, KIND_VALUE, unwrap, wrap
from .generations import Generations
from .invalidation import Invalidation
from .listener import InvalidationListener
from .memory import LRUMemoryCache
from .metrics import CacheMetrics
from .tier import Tier

log = logging.getLogger("grpcstack.cache")


@dataclass(frozen=True)
class Negative:
    """A loader's "not found": cached for the negative TTL; ``message`` is replayed."""

    message: bytes = b""


#: returns the value's bytes, or a Negative (None is a Negative without a message)
Loader = Callable[[], Awaitable[bytes | Negative | None]]


@dataclass(frozen=True)
class _Guard:
    """What a lookup saw: a write based on it is refused once any of it has changed."""

    method: str
    gen: int
    epoch: tuple[int, int]
    tombstone: bytes  # id of the tombstone found in L2, b"" if none


@dataclass
class _Flight:
    task: asyncio.Task[tuple[int, bytes]]
    waiters: int = 0


class TieredCache(Invalidation):
    def __init__(
        self,
        tiers: list[Tier],
        *,
        service: str,
        namespace: str,
        metrics: CacheMetrics | None = None,
        pubsub: Any = None,
        subscriber: Any = None,
        negative_ttl: float = 5.0,
        load_timeout: float = 30.0,
        finish_orphaned: bool = False,
        on_load: Callable[[], Callable[[], None] | None] | None = None,
        clock: Callable[[], float] = time.time,
        versioned: bool = True,
    ) -> None:
        if not tiers:
            raise ValueError("a cache needs at least one tier")
        self.tiers = tiers
        self.service = service
        self.namespace = namespace
        self.metrics = metrics or CacheMetrics()
        self.negative_ttl = negative_ttl
        self.load_timeout = load_timeout
        self.finish_orphaned = finish_orphaned
        #: called as a load starts (in the first caller's context); returns its release
        self.on_load = on_load
        self.default_ttl = max(t.ttl for t in tiers)
        self.clock = clock  # wall clock: hard expiries travel between processes
        #: False: every key stays at generation 0 (only the benchmark's baseline uses this)
        self.versioned = versioned
        self._l1 = tiers[0].cache if isinstance(tiers[0].cache, LRUMemoryCache) else None
        l2 = next((t for t in tiers if hasattr(t.cache, "cas_set")), None)
        self._l2 = l2
        self.generations = Generations(
            namespace, l2.cache if l2 is not None else None, l2.timeout if l2 else None
        )
        # a tombstone outlives any load that could have looked the key up before it
        self.tombstone_ttl = load_timeout + 2 * ((l2.timeout or 1.0) if l2 else 1.0) + 1.0
        self._inflight: dict[str, _Flight] = {}
        self._epoch = 0  # bumped by glob invalidations and listener reconnects
        self._epochs: dict[str, int] = {}  # per method: deletes/invalidations seen here
        self._patterns: dict[str, str] = {}
        self.instance_id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.channel = f"{namespace}:invalidate"
        self.listener: InvalidationListener | None = None
        self.generations.on_applied = self._announce_generation
        if pubsub is not None:
            self.listener = InvalidationListener(
                pubsub,
                subscriber if subscriber is not None else pubsub,
                self.channel,
                self.instance_id,
                self._on_message,
                self._on_subscribed,
                owns_subscriber=subscriber is not None,
            )

    def full_key(self, key: str, gen: int = 0) -> str:
        return f"{self.namespace}:{key}:g{gen}"

    def full_pattern(self, pattern: str) -> str:
        """A glob relative to the namespace, matching every generation."""
        return f"{self.namespace}:{pattern}"

    def _select(self, names: Collection[str] | None) -> list[tuple[int, Tier]]:
        return [(i, t) for i, t in enumerate(self.tiers) if names is None or t.name in names]

    def _epoch_of(self, method: str) -> tuple[int, int]:
        return self._epoch, self._epochs.get(method, 0)

    def _bump_epoch(self, method: str) -> None:
        self._epochs[method] = self._epochs.get(method, 0) + 1

    def _still_valid(self, guard: _Guard) -> bool:
        return (
            self._epoch_of(guard.method) == guard.epoch
            and self.generations.local.get(guard.method, 0) == guard.gen
        )

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
        read = tier.cache.fetch(full) if tier is self._l2 else tier.cache.get(full)  # type: ignore[attr-defined]
        raw = await self._timed(tier, "get", read)
        return None if raw is None else unwrap(raw)

    async def _put(
        self,
        i: int,
        tier: Tier,
        full: str,
        expiry: float,
        kind: int,
        payload: bytes,
        guard: _Guard | None,
        method: str,
    ) -> bool:
        """False when a guarded L2 write was refused (the value is stale)."""
        ttl = min(tier.ttl, expiry - self.clock())
        if ttl <= 0:
            return True
        try:
            if i == 0 and self._l1 is not None:
                self._l1.set_nowait(full, (expiry, kind, payload), ttl)
                self.metrics.l1_size.set(len(self._l1))
                self.metrics.l1_evictions.set(self._l1.evictions)
            elif guard is not None and tier is self._l2:
                written, current = await self._timed(
                    tier,
                    "set",
                    tier.cache.cas_set(  # type: ignore[attr-defined]
                        self.generations.key(guard.method),
                        full,
                        guard.gen,
                        guard.tombstone,
                        wrap(payload, expiry, kind),
                        ttl,
                    ),
                )
                if not written:
                    self.metrics.child(self.metrics.stale_writes, self.service, method).inc()
                    self.generations.observe(guard.method, current)
                    return False
            else:
                blob = wrap(payload, expiry, kind)
                await self._timed(tier, "set", tier.cache.set(full, blob, ttl=ttl))
        except Exception as exc:  # a tier must never fail the call
            self.metrics.child(self.metrics.errors, self.service, method, tier.name).inc()
            log.warning("cache set failed on %s for %s: %r", tier.name, full, exc)
        return True

    async def _write(
        self,
        tiers: list[tuple[int, Tier]],
        full: str,
        expiry: float,
        kind: int,
        payload: bytes,
        method: str,
        guard: _Guard | None = None,
    ) -> None:
        """Guarded writes go to L2 first (the compare-and-set decides), then the local tiers."""
        if guard is not None:
            if not self._still_valid(guard):
                return
            for i, tier in tiers:
                if tier is self._l2:
                    if not await self._put(i, tier, full, expiry, kind, payload, guard, method):
                        return
            if not self._still_valid(guard):
                return
            tiers = [(i, t) for i, t in tiers if t is not self._l2]
        remote = []
        for i, tier in tiers:
            if i == 0:
                await self._put(i, tier, full, expiry, kind, payload, guard, method)
            else:
                remote.append(self._put(i, tier, full, expiry, kind, payload, guard, method))
        if remote:
            await asyncio.gather(*remote)

    # --- reads ---------------------------------------------------------------------------

    async def _lookup(
        self, key: str, method: str, tiers: Collection[str] | None
    ) -> tuple[tuple[int, bytes] | None, _Guard]:
        gen = await self.generations.current(method) if self.versioned else 0
        if gen is None:  # unknown generation: no tier may be trusted or written this time
            m = self.metrics
            m.child(m.errors, self.service, method, "generation").inc()
            return None, _Guard(method, -1, self._epoch_of(method), b"")
        guard = _Guard(method, gen, self._epoch_of(method), b"")
        full = self.full_key(key, gen)
        m = self.metrics
        selected = self._select(tiers)
        for pos, (i, tier) in enumerate(selected):
            try:
                entry = await self._get_raw(i, tier, full)
            except Exception as exc:
                m.child(m.errors, self.service, method, tier.name).inc()
                log.debug("cache get failed on %s: %r", tier.name, exc)
                continue
            if entry is not None and entry[1] == KIND_TOMBSTONE:
                guard = _Guard(method, gen, guard.epoch, entry[2])
                entry = None
            if entry is None or entry[0] <= self.clock():
                m.child(m.misses, self.service, method, tier.name).inc()
                continue
            m.child(m.hits, self.service, method, tier.name).inc()
            expiry, kind, payload = entry
            if pos:
                await self._write(selected[:pos], full, expiry, kind, payload, method, guard)
            return (kind, payload), guard
        return None, guard

    def _l1_hit(
        self, key: str, method: str, tiers: Collection[str] | None
    ) -> tuple[int, bytes] | None:
        """The common case without a coroutine: a live L1 entry of the known generation
        (counted as ``_lookup`` would); anything else takes ``_lookup``'s full path."""
        l1 = self._l1
        if l1 is None:
            return None
        gen = self.generations.known(method) if self.versioned else 0
        name = self.tiers[0].name
        if gen is None or (tiers is not None and name not in tiers):
            return None
        entry = l1.get_nowait(self.full_key(key, gen))
        if entry is None or entry[1] == KIND_TOMBSTONE or entry[0] <= self.clock():
            return None
        m = self.metrics
        m.child(m.hits, self.service, method, name).inc()
        m.child(m.lookups, self.service, method, "hit").inc()
        return entry[1], entry[2]

    async def lookup(
        self, key: str, *, method: str = "", tiers: Collection[str] | None = None
    ) -> tuple[int, bytes] | None:
        """(kind, payload) from the first tier that has it, promoted upwards; None on a miss."""
        return (await self._lookup(key, method, tiers))[0]

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
        """An unconditional write (it also replaces a tombstone)."""
        gen = await self.generations.current(method)
        full = self.full_key(key, self.generations.best_known(method) if gen is None else gen)
        expiry = self.clock() + (ttl if ttl is not None else self.default_ttl)
        await self._write(self._select(tiers), full, expiry, kind, value, method)

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
        found = self._l1_hit(key, method, tiers)
        if found is not None:
            return found
        found, guard = await self._lookup(key, method, tiers)
        if found is not None:
            m.child(m.lookups, self.service, method, "hit").inc()
            return found
        m.child(m.lookups, self.service, method, "miss").inc()
        flight_key = self.full_key(key, guard.gen)  # a new generation never joins an old load
        flight = self._inflight.get(flight_key)
        if flight is None:
            release = self.on_load() if self.on_load is not None else None
            task = asyncio.get_running_loop().create_task(
                self._load(key, loader, ttl, tiers, guard)
            )
            flight = self._inflight[flight_key] = _Flight(task)
            # a done callback: it runs even for a task cancelled before its first step
            task.add_done_callback(lambda t: self._load_done(flight_key, t, release))
        else:
            m.child(m.coalesced, self.service, method).inc()
        flight.waiters += 1
        try:
            # a cancelled caller stops waiting; the shared load goes on for the others
            return await asyncio.shield(flight.task)
        finally:
            flight.waiters -= 1
            if not flight.waiters and not flight.task.done() and not self.finish_orphaned:
                # nobody is left to answer: stop the source query rather than pin the key
                if self._inflight.get(flight_key) is flight:
                    del self._inflight[flight_key]
                flight.task.cancel()
                m.child(m.abandoned, self.service, method).inc()

    def _load_done(
        self, flight_key: str, task: asyncio.Task[Any], release: Callable[[], None] | None
    ) -> None:
        if release is not None:
            release()
        flight = self._inflight.get(flight_key)
        if flight is not None and flight.task is task:
            del self._inflight[flight_key]
        if not task.cancelled():
            task.exception()  # retrieved: no warning when every waiter has left

    async def _load(
        self,
        key: str,
        loader: Loader,
        ttl: float | None,
        tiers: Collection[str] | None,
        guard: _Guard,
    ) -> tuple[int, bytes]:
        method = guard.method
        self.metrics.child(self.metrics.loads, self.service, method).inc()
        async with asyncio.timeout(self.load_timeout):
            value = await loader()  # an exception reaches every waiter, is not cached
        if isinstance(value, bytes):
            kind, payload = KIND_VALUE, value
            lifetime = ttl if ttl is not None else self.default_ttl
        else:
            kind, payload = KIND_NEGATIVE, value.message if value is not None else b""
            lifetime = self.negative_ttl
        if lifetime > 0 and guard.gen >= 0:
            full = self.full_key(key, guard.gen)
            expiry = self.clock() + lifetime
            await self._write(self._select(tiers), full, expiry, kind, payload, method, guard)
        return kind, payload

    async def start(self) -> None:
        if self.listener is not None:
            await self.listener.start()

    async def close(self) -> None:
        await self.generations.close()
        if self.listener is not None:
            await self.listener.close()
        flights = [f.task for f in self._inflight.values()]
        self._inflight.clear()
        for task in flights:
            task.cancel()
        if flights:
            await asyncio.gather(*flights, return_exceptions=True)
        for tier in self.tiers:
            flush = getattr(tier.cache, "flush", None)
            if flush is not None:
                await flush()
