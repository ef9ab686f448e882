"""DuckDB off the event loop: one writer thread owns the connection's writes, readers use cursors.

DuckDB's API is synchronous and a query can take seconds, so nothing here runs on the loop
thread. All writes go through ONE thread (parallel cursors give write-write conflicts on the
same key); reads run on a small pool with one cursor per thread. A DuckDB file can be opened by
one process only: give each process its own file, or use ":memory:".
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class DuckDBStore:
    def __init__(self, path: str = ":memory:", *, readers: int = 2) -> None:
        import duckdb

        self.path = path
        self._conn = duckdb.connect(path)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="duckdb-writer")
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="duckdb-reader")
        self._local = threading.local()
        self._cursors: list[Any] = []
        self._lock = threading.Lock()
        self.closed = False

    def _cursor(self) -> Any:
        cur = getattr(self._local, "cursor", None)
        if cur is None:
            cur = self._local.cursor = self._conn.cursor()
            with self._lock:
                self._cursors.append(cur)
        return cur

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(connection, *args)`` on the writer thread."""
        if self.closed:
            raise RuntimeError("DuckDB store is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writer, lambda: fn(self._cursor(), *args))

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(cursor, *args)`` on a reader thread."""
        if self.closed:
            raise RuntimeError("DuckDB store is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, lambda: fn(self._cursor(), *args))

    async def execute(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        """A write statement on the writer thread; returns its rows."""
        return await self.write(lambda c: c.execute(sql, params or []).fetchall())

    async def query(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        return await self.read(lambda c: c.execute(sql, params or []).fetchall())

    async def ping(self) -> bool:
        rows = await self.query("SELECT 1")
        return rows == [(1,)]

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True

        def close_all() -> None:
            with self._lock:
                for cur in self._cursors:
                    cur.close()
                self._cursors.clear()
            self._conn.close()

        loop = asyncio.get_running_loop()
        # readers finish their statements first: a busy cursor refuses to close
        await loop.run_in_executor(None, self._readers.shutdown, True)
        await loop.run_in_executor(self._writer, close_all)
        self._writer.shutdown(wait=True)
