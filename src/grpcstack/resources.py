"""Shared resources owned by a server's lifecycle: pooled clients created lazily when configured.

Opened inside the running loop before ``before_start`` and closed after ``after_stop``. Redis: one
client (on its own blocking pool, with explicit timeouts and bounded retries) per database number
of the seeds' REDIS_DB_* allocation, created on first use, only when REDIS_URL is set.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .settings import ServerSettings

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("grpcstack.resources")


class ResourceNotConfigured(RuntimeError):
    """A resource was asked for whose URL is not set."""


class Resources:
    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.opened = False
        self._redis: dict[int, Redis] = {}

    async def open(self) -> None:
        self.opened = True

    async def close(self) -> None:
        clients, self._redis = list(self._redis.values()), {}
        for client in clients:
            try:
                await client.aclose()
                await client.connection_pool.disconnect()
            except Exception:  # closing must not fail a stop
                log.debug("closing a Redis client failed", exc_info=True)
        self.opened = False

    @property
    def redis_configured(self) -> bool:
        return bool(self.settings.REDIS_URL)

    def redis(self, db: int | None = None) -> Redis:
        """The pooled client for database ``db`` (REDIS_DB_GRPC when omitted)."""
        s = self.settings
        if not s.REDIS_URL:
            raise ResourceNotConfigured("REDIS_URL is not set")
        db = s.REDIS_DB_GRPC if db is None else db
        client = self._redis.get(db)
        if client is None:
            client = self._redis[db] = _make_redis(s, db)
        return client


def _make_redis(s: ServerSettings, db: int) -> Redis:
    from redis.asyncio import BlockingConnectionPool, Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff

    assert s.REDIS_URL is not None
    kwargs: dict[str, Any] = {
        "db": db,
        "max_connections": s.REDIS_MAX_CONNECTIONS,
        # waits for a free connection instead of raising when the pool is exhausted
        "timeout": s.REDIS_POOL_TIMEOUT_SECONDS,
        "socket_timeout": s.REDIS_SOCKET_TIMEOUT_SECONDS,
        "socket_connect_timeout": s.REDIS_CONNECT_TIMEOUT_SECONDS,
        "health_check_interval": 30,
    }
    pool = BlockingConnectionPool.from_url(s.REDIS_URL, **kwargs)
    retry = Retry(ExponentialBackoff(cap=0.5, base=0.05), s.REDIS_RETRIES)
    return Redis(connection_pool=pool, retry=retry)
