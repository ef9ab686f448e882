"""L3: DuckDB as an aiocache backend, for large columnar data kept longer than Redis keeps it.

Writes never wait on DuckDB: ``set`` records the row and a background task writes every row
pending at that moment in ONE multi-row statement on the store's writer thread (a single-row
upsert costs ~2 ms). Reads see pending rows first, then query a reader cursor. Expired rows are
removed by reads that meet them and by a sweep every ``purge_every`` batches.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import re
import time
from typing import TYPE_CHECKING, Any

from aiocache.base import BaseCache

from .envelope import RawBytesSerializer

if TYPE_CHECKING:
    from ..duckdb_store import DuckDBStore

log = logging.getLogger("grpcstack.cache")


class DuckDBCache(BaseCache):  # type: ignore[misc]
    NAME = "duckdb"

    def __init__(
        self,
        store: DuckDBStore,
        *,
        table: str = "grpc_cache",
        purge_every: int = 100,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("timeout", None)
        kwargs.setdefault("serializer", RawBytesSerializer())
        super().__init__(**kwargs)
        if not table.isidentifier():
            raise ValueError("table must be an identifier")
        self.store = store
        self.table = table
        self.purge_every = purge_every
        self._pending: dict[str, tuple[bytes, float | None]] = {}
        self._flushing: asyncio.Task[None] | None = None
        self._ready = False
        self.batches = 0

    async def _ensure_table(self) -> None:
        if not self._ready:
            await self.store.execute(
                f"CREATE TABLE IF NOT EXISTS {self.table} "
                "(key VARCHAR PRIMARY KEY, value BLOB NOT NULL, expires_at DOUBLE)"
            )
            self._ready = True

    # --- batched writes -----------------------------------------------------------------

    def _schedule_flush(self) -> None:
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        await asyncio.sleep(0)  # let the current burst of sets join this batch
        while self._pending:
            rows, self._pending = self._pending, {}
            try:
                await self._ensure_table()
                await self.store.write(self._write_rows, rows)
                self.batches += 1
            except Exception:
                log.warning("DuckDB cache write of %d rows failed", len(rows), exc_info=True)

    def _write_rows(self, cur: Any, rows: dict[str, tuple[bytes, float | None]]) -> None:
        items = list(rows.items())
        for start in range(0, len(items), 500):
            chunk = items[start : start + 500]
            params: list[Any] = []
            for key, (value, expires) in chunk:
                params += [key, value, expires]
            cur.execute(
                f"INSERT OR REPLACE INTO {self.table} (key, value, expires_at) VALUES "
                + ",".join(["(?, ?, ?)"] * len(chunk)),
                params,
            )
        if self.purge_every and (self.batches + 1) % self.purge_every == 0:
            cur.execute(f"DELETE FROM {self.table} WHERE expires_at <= ?", [time.time()])

    async def flush(self) -> None:
        """Wait until every pending row is written (tests, shutdown)."""
        while self._flushing is not None and not self._flushing.done():
            await asyncio.shield(self._flushing)

    # --- reads --------------------------------------------------------------------------

    def _read_rows(self, cur: Any, keys: list[str]) -> dict[str, bytes]:
        marks = ",".join("?" * len(keys))
        rows = cur.execute(
            f"SELECT key, value, expires_at FROM {self.table} WHERE key IN ({marks})", keys
        ).fetchall()
        now = time.time()
        return {k: v for k, v, exp in rows if exp is None or exp > now}

    async def _lookup(self, keys: list[str]) -> list[bytes | None]:
        now = time.time()
        found: dict[str, bytes] = {}
        missing = []
        for key in keys:
            pending = self._pending.get(key)
            if pending is not None and (pending[1] is None or pending[1] > now):
                found[key] = pending[0]
            else:
                missing.append(key)
        if missing:
            await self._ensure_table()
            found.update(await self.store.read(self._read_rows, missing))
        return [found.get(k) for k in keys]

    # --- the aiocache backend interface ---------------------------------------------------

    async def _get(self, key: str, encoding: str = "utf-8", _conn: Any = None) -> Any:
        return (await self._lookup([key]))[0]

    async def _gets(self, key: str, encoding: str = "utf-8", _conn: Any = None) -> Any:
        return await self._get(key)

    async def _multi_get(self, keys: list[str], encoding: str = "utf-8", _conn: Any = None) -> Any:
        return await self._lookup(list(keys))

    async def _set(
        self,
        key: str,
        value: Any,
        ttl: float | None = None,
        _cas_token: Any = None,
        _conn: Any = None,
    ) -> bool:
        if _cas_token is not None:
            raise NotImplementedError("compare-and-swap is not supported by DuckDBCache")
        self._pending[key] = (value, time.time() + ttl if ttl else None)
        self._schedule_flush()
        return True

    async def _multi_set(self, pairs: Any, ttl: float | None = None, _conn: Any = None) -> bool:
        for key, value in pairs:
            await self._set(key, value, ttl)
        return True

    async def set_many(self, rows: list[tuple[str, bytes, float]]) -> None:
        for key, value, ttl in rows:
            await self._set(key, value, ttl)

    async def _add(self, key: str, value: Any, ttl: float | None = None, _conn: Any = None) -> bool:
        if await self._get(key) is not None:
            raise ValueError(f"Key {key} already exists, use .set to update the value")
        return await self._set(key, value, ttl)

    async def _exists(self, key: str, _conn: Any = None) -> bool:
        return await self._get(key) is not None

    async def _increment(self, key: str, delta: int, _conn: Any = None) -> int:
        raise NotImplementedError("increment is not supported by DuckDBCache")

    async def _expire(self, key: str, ttl: float, _conn: Any = None) -> bool:
        await self.flush()
        await self._ensure_table()
        rows = await self.store.execute(
            f"UPDATE {self.table} SET expires_at = ? WHERE key = ? RETURNING key",
            [time.time() + ttl if ttl else None, key],
        )
        return bool(rows)

    async def _delete(self, key: str, _conn: Any = None) -> int:
        pending = self._pending.pop(key, None)
        await self.flush()
        await self._ensure_table()
        rows = await self.store.execute(
            f"DELETE FROM {self.table} WHERE key = ? RETURNING key", [key]
        )
        return max(len(rows), 1 if pending else 0)

    async def delete_matching(self, pattern: str) -> int:
        """DuckDB's GLOB has the * ? [...] syntax of Redis MATCH."""
        match = re.compile(fnmatch.translate(pattern)).match
        dropped = [k for k in self._pending if match(k)]
        for key in dropped:
            del self._pending[key]
        await self.flush()
        await self._ensure_table()
        rows = await self.store.execute(
            f"DELETE FROM {self.table} WHERE key GLOB ? RETURNING key", [pattern]
        )
        return len(set(dropped) | {r[0] for r in rows})

    async def _clear(self, namespace: str | None = None, _conn: Any = None) -> bool:
        await self.delete_matching(f"{namespace}*" if namespace else "*")
        return True

    async def _raw(
        self, command: str, *args: Any, encoding: str = "utf-8", _conn: Any = None, **kwargs: Any
    ) -> Any:
        return await self.store.query(command, list(args))

    async def _redlock_release(self, key: str, value: Any) -> int:
        raise NotImplementedError

    async def _close(self, *args: Any, _conn: Any = None, **kwargs: Any) -> None:
        await self.flush()
