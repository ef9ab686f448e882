"""Shared resources owned by a server's lifecycle: pooled clients created lazily when configured.

Opened inside the running loop before ``before_start`` and closed after ``after_stop``:

* Redis (REDIS_URL): one client per database number of the seeds' REDIS_DB_* allocation, each
  on a blocking pool with explicit timeouts and bounded retries; and, for the cache's per-call
  commands, one ``MultiplexedRedis`` (a pipelined connection) per database (REDIS_MULTIPLEXED).
* MongoDB (MONGO_URL): PyMongo's ``AsyncMongoClient`` (MONGO_DRIVER=motor for teams that pin
  Motor), with serverSelectionTimeoutMS set so a down server fails fast and socketTimeoutMS
  (optionally timeoutMS) so a hung one fails a query instead of pinning it.
* DuckDB (DUCKDB_PATH, a file or ":memory:"): a ``DuckDBStore``, never called on the loop thread.

Every configured resource has a readiness check with a timeout, wired into health by the server:
a down MongoDB makes the services NOT_SERVING while the process stays up, and they recover with it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .extras import require
from .settings import ServerSettings

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from .duckdb_store import DuckDBStore
    from .redis_multiplexed import MultiplexedRedis

log = logging.getLogger("grpcstack.resources")


class ResourceNotConfigured(RuntimeError):
    """A resource was asked for whose URL is not set."""


class Resources:
    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.opened = False
        self._redis: dict[int, Redis] = {}
        self._multiplexed: dict[int, MultiplexedRedis] = {}
        self._mongo: Any = None
        self._duckdb: DuckDBStore | None = None

    async def open(self) -> None:
        self.check_extras()
        self.opened = True

    def check_extras(self) -> None:
        """Fail at start, naming the extra to install, when a configured client is missing."""
        s = self.settings
        if s.REDIS_URL:
            require("redis", "REDIS_URL")
        if s.MONGO_URL:
            require("motor" if s.MONGO_DRIVER == "motor" else "pymongo", "MONGO_URL")
        if s.GRPC_CACHE_L3_ENABLED:
            require("duckdb", "GRPC_CACHE_L3_ENABLED")

    async def close(self) -> None:
        if self._mongo is not None:
            client, self._mongo = self._mongo, None
            try:
                result = client.close()
                if hasattr(result, "__await__"):
                    await result
            except Exception:
                log.debug("closing the MongoDB client failed", exc_info=True)
        if self._duckdb is not None:
            store, self._duckdb = self._duckdb, None
            await store.close()
        multiplexed, self._multiplexed = list(self._multiplexed.values()), {}
        for mux in multiplexed:
            await mux.close()
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
            require("redis", "REDIS_URL")
            client = self._redis[db] = _make_redis(s, db)
        return client

    def redis_multiplexed(self, db: int | None = None) -> MultiplexedRedis | None:
        """The pipelined connection for database ``db`` (REDIS_DB_GRPC when omitted); None when
        REDIS_MULTIPLEXED is off or REDIS_URL is not a ``redis://`` or ``unix://`` URL."""
        s = self.settings
        if not s.REDIS_URL:
            raise ResourceNotConfigured("REDIS_URL is not set")
        from .redis_multiplexed import MultiplexedRedis

        if not s.REDIS_MULTIPLEXED or not MultiplexedRedis.supports(s.REDIS_URL):
            return None
        db = s.REDIS_DB_GRPC if db is None else db
        mux = self._multiplexed.get(db)
        if mux is None:
            mux = self._multiplexed[db] = MultiplexedRedis.from_url(
                s.REDIS_URL,
                db=db,
                connect_timeout=s.REDIS_CONNECT_TIMEOUT_SECONDS,
                stall_timeout=s.REDIS_SOCKET_TIMEOUT_SECONDS,
            )
        return mux

    # --- MongoDB ----------------------------------------------------------------------------

    @property
    def mongo_configured(self) -> bool:
        return bool(self.settings.MONGO_URL)

    def mongo(self) -> Any:
        """The shared async MongoDB client (PyMongo AsyncMongoClient, or Motor)."""
        s = self.settings
        if not s.MONGO_URL:
            raise ResourceNotConfigured("MONGO_URL is not set")
        if self._mongo is None:
            kwargs = {
                "serverSelectionTimeoutMS": s.MONGO_SERVER_SELECTION_TIMEOUT_MS,
                "connectTimeoutMS": s.MONGO_CONNECT_TIMEOUT_MS,
                "maxPoolSize": s.MONGO_MAX_POOL_SIZE,
                "socketTimeoutMS": s.MONGO_SOCKET_TIMEOUT_MS,
            }
            if s.MONGO_TIMEOUT_MS:
                kwargs["timeoutMS"] = s.MONGO_TIMEOUT_MS
            require("motor" if s.MONGO_DRIVER == "motor" else "pymongo", "MONGO_URL")
            if s.MONGO_DRIVER == "motor":
                from motor.motor_asyncio import AsyncIOMotorClient

                self._mongo = AsyncIOMotorClient(s.MONGO_URL, **kwargs)
            else:
                from pymongo import AsyncMongoClient

                self._mongo = AsyncMongoClient(s.MONGO_URL, **kwargs)
        return self._mongo

    def mongo_db(self, name: str | None = None) -> Any:
        """A database: ``name``, else MONGO_DATABASE, else the one in MONGO_URL."""
        client = self.mongo()
        name = name or self.settings.MONGO_DATABASE
        return client[name] if name else client.get_default_database()

    # --- DuckDB -----------------------------------------------------------------------------

    def duckdb(self) -> DuckDBStore:
        if self._duckdb is None:
            require("duckdb", "Resources.duckdb()")
            from .duckdb_store import DuckDBStore

            self._duckdb = DuckDBStore(self.settings.DUCKDB_PATH)
        return self._duckdb

    # --- readiness --------------------------------------------------------------------------

    def readiness_checks(self) -> list[tuple[str, Callable[[], Awaitable[bool]]]]:
        """Checks for the resources calls cannot do without (health adds its own timeout).

        Redis is left out unless REDIS_REQUIRED_FOR_READINESS: the cache and the rate limiter
        degrade without it, and marking every replica NOT_SERVING when the shared Redis dies
        would turn a degraded service into an outage.
        """
        checks: list[tuple[str, Callable[[], Awaitable[bool]]]] = []
        if self.redis_configured and self.settings.REDIS_REQUIRED_FOR_READINESS:
            checks.append(("redis", self.redis_ready))
        if self.mongo_configured:
            checks.append(("mongodb", self.mongo_ready))
        return checks

    async def redis_ready(self) -> bool:
        return bool(await self.redis().ping())

    async def mongo_ready(self) -> bool:
        reply = await self.mongo().admin.command("ping")
        return bool(reply.get("ok"))


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
    # on the pool's connections: redis-py ignores a Redis(retry=...) given with a pool, so a
    # command on a connection that went stale (a Redis restart) failed instead of retrying
    kwargs["retry"] = Retry(ExponentialBackoff(cap=0.5, base=0.05), s.REDIS_RETRIES)
    return Redis(connection_pool=BlockingConnectionPool.from_url(s.REDIS_URL, **kwargs))
