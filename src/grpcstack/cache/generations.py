"""Per-method generation numbers: part of every versioned cache key.

Invalidating a method is one INCR of its counter in Redis: O(1), atomic across processes, and
no SCAN that could miss keys written meanwhile. Entries of older generations are never read
again and expire by their TTL. Each process keeps the numbers it has seen; pub/sub tells it of
a bump at once, and a listener reconnect re-reads them all. A bump that failed while Redis was
down is retried in the background and broadcast once applied: an invalidation is late, never
lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .redis import SharedRedisCache

log = logging.getLogger("grpcstack.cache")


class Generations:
    def __init__(
        self,
        namespace: str,
        store: SharedRedisCache | None,
        timeout: float | None = None,
        *,
        retry_seconds: float = 1.0,
    ) -> None:
        self.namespace = namespace
        self.store = store
        self.timeout = timeout
        self.retry_seconds = retry_seconds
        #: called after a bump that had failed reached Redis (the owner broadcasts it)
        self.on_applied: Callable[[str, int], Awaitable[None]] | None = None
        self._retry: asyncio.Task[None] | None = None
        self.local: dict[str, int] = {}
        self._fetched: set[str] = set()  # read from Redis at least once
        self._pending: set[str] = set()  # bumped here while Redis was unreachable
        self._fetching: dict[str, asyncio.Future[int | None]] = {}

    def key(self, method: str) -> str:
        # the same {hash tag} as the method's entries (keys.method_prefix): one cluster slot
        return f"{self.namespace}:{{{method.strip('/')}}}:gen"

    def observe(self, method: str, gen: int) -> int:
        """Numbers only grow: a late or duplicated message never moves one back."""
        current = max(self.local.get(method, 0), gen)
        self.local[method] = current
        return current

    async def current(self, method: str) -> int | None:
        """The method's generation; None while Redis cannot say (the caller then bypasses the
        cache: a guessed number could name entries from before an invalidation)."""
        gen = self.local.get(method)
        if gen is not None and (self.store is None or method in self._fetched):
            return gen
        if self.store is None:
            return self.observe(method, 0)
        fetch = self._fetching.get(method)
        if fetch is None:  # one read per method however many callers arrive at once
            fetch = asyncio.ensure_future(self._fetch(method))
            self._fetching[method] = fetch
            fetch.add_done_callback(lambda _: self._fetching.pop(method, None))
        return await asyncio.shield(fetch)

    async def _fetch(self, method: str) -> int | None:
        assert self.store is not None
        try:
            async with asyncio.timeout(self.timeout):
                (fetched,) = await self.store.generations([self.key(method)])
        except Exception as exc:
            log.debug("cache generation read failed for %s: %r", method, exc)
            return None
        self._fetched.add(method)
        return self.observe(method, fetched)

    def known(self, method: str) -> int | None:
        """The generation ``current`` would return at once, without awaiting; else None."""
        gen = self.local.get(method)
        if gen is not None and (self.store is None or method in self._fetched):
            return gen
        return None

    def best_known(self, method: str) -> int:
        return self.local.get(method, 0)

    async def bump(self, method: str) -> int:
        """The method's next generation; raises (after bumping locally) if Redis failed."""
        if self.store is None:
            return self.observe(method, self.local.get(method, 0) + 1)
        try:
            async with asyncio.timeout(self.timeout):
                new = await self.store.bump(self.key(method))
        except Exception:
            self._pending.add(method)
            self.observe(method, self.local.get(method, 0) + 1)
            if self._retry is None or self._retry.done():
                self._retry = asyncio.get_running_loop().create_task(self._retry_pending())
            raise
        self._fetched.add(method)
        return self.observe(method, new)

    async def refresh(self) -> None:
        """After a gap in pub/sub: apply failed bumps, then re-read every known number."""
        if self.store is None:
            return
        await self._apply_pending()
        methods = list(self.local)
        if methods:
            values = await self.store.generations([self.key(m) for m in methods])
            for method, gen in zip(methods, values, strict=True):
                self._fetched.add(method)
                self.observe(method, gen)

    async def _apply_pending(self) -> None:
        assert self.store is not None
        for method in list(self._pending):
            async with asyncio.timeout(self.timeout):
                new = await self.store.bump(self.key(method))
            self._pending.discard(method)
            self._fetched.add(method)
            self.local[method] = new  # it ran ahead by the failed bumps; Redis is right now
            if self.on_applied is not None:
                await self.on_applied(method, new)

    async def _retry_pending(self) -> None:
        """Failed bumps are retried until Redis takes them (an invalidation is never lost)."""
        while self._pending:
            await asyncio.sleep(self.retry_seconds)
            try:
                await self._apply_pending()
            except Exception as exc:
                log.debug("cache generation bump retry failed: %r", exc)

    async def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            try:
                await self._retry
            except asyncio.CancelledError:
                pass
            self._retry = None
