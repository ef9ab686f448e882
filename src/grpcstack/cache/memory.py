"""L1: a bounded LRU aiocache backend with per-entry TTL and lazy expiry.

aiocache 0.12's SimpleMemoryCache has no size bound and schedules one loop timer per key. Here
entries carry their deadline and are dropped when read after it or when the LRU end is evicted;
``get_nowait``/``set_nowait`` are the synchronous fast paths the tiered cache uses.
"""

from __future__ import annotations

import fnmatch
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from aiocache.base import BaseCache
from aiocache.serializers import NullSerializer

_FOREVER = float("inf")


class LRUMemoryCache(BaseCache):  # type: ignore[misc]
    NAME = "lru_memory"

    def __init__(
        self, maxsize: int = 1000, clock: Callable[[], float] = time.monotonic, **kwargs: Any
    ) -> None:
        kwargs.setdefault("timeout", None)  # a dict lookup needs no asyncio.wait_for
        kwargs.setdefault("serializer", NullSerializer())
        super().__init__(**kwargs)
        if maxsize <= 0:
            raise ValueError("maxsize must be positive")
        self.maxsize = maxsize
        self.clock = clock
        self._data: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self.evictions = 0
        self.expirations = 0

    def __len__(self) -> int:
        return len(self._data)

    def get_nowait(self, key: str) -> Any:
        item = self._data.get(key)
        if item is None:
            return None
        if item[0] <= self.clock():
            del self._data[key]
            self.expirations += 1
            return None
        self._data.move_to_end(key)
        return item[1]

    def set_nowait(self, key: str, value: Any, ttl: float | None = None) -> bool:
        data = self._data
        data[key] = (self.clock() + ttl if ttl else _FOREVER, value)
        data.move_to_end(key)
        if len(data) > self.maxsize:
            now = self.clock()
            while len(data) > self.maxsize:
                _, (deadline, _) = data.popitem(last=False)
                if deadline <= now:
                    self.expirations += 1
                else:
                    self.evictions += 1
        return True

    def delete_nowait(self, key: str) -> int:
        return 1 if self._data.pop(key, None) is not None else 0

    def clear_nowait(self) -> None:
        self._data.clear()

    def delete_matching(self, pattern: str) -> int:
        """Delete keys matching a Redis-style glob (``*``, ``?``, ``[...]``)."""
        match = re.compile(fnmatch.translate(pattern)).match
        victims = [k for k in self._data if match(k)]
        for k in victims:
            del self._data[k]
        return len(victims)

    # --- the aiocache backend interface -----------------------------------------------------

    async def _get(self, key: str, encoding: str = "utf-8", _conn: Any = None) -> Any:
        return self.get_nowait(key)

    async def _gets(self, key: str, encoding: str = "utf-8", _conn: Any = None) -> Any:
        return self.get_nowait(key)

    async def _multi_get(self, keys: list[str], encoding: str = "utf-8", _conn: Any = None) -> Any:
        return [self.get_nowait(k) for k in keys]

    async def _set(
        self,
        key: str,
        value: Any,
        ttl: float | None = None,
        _cas_token: Any = None,
        _conn: Any = None,
    ) -> bool:
        if _cas_token is not None and self.get_nowait(key) != _cas_token:
            return False
        return self.set_nowait(key, value, ttl)

    async def _multi_set(self, pairs: Any, ttl: float | None = None, _conn: Any = None) -> bool:
        for key, value in pairs:
            self.set_nowait(key, value, ttl)
        return True

    async def _add(self, key: str, value: Any, ttl: float | None = None, _conn: Any = None) -> bool:
        if self.get_nowait(key) is not None:
            raise ValueError(f"Key {key} already exists, use .set to update the value")
        return self.set_nowait(key, value, ttl)

    async def _exists(self, key: str, _conn: Any = None) -> bool:
        return self.get_nowait(key) is not None

    async def _increment(self, key: str, delta: int, _conn: Any = None) -> int:
        item = self._data.get(key)
        if item is None or item[0] <= self.clock():
            self.set_nowait(key, delta)
            return delta
        new = int(item[1]) + delta
        self._data[key] = (item[0], new)
        return new

    async def _expire(self, key: str, ttl: float, _conn: Any = None) -> bool:
        item = self._data.get(key)
        if item is None:
            return False
        self._data[key] = (self.clock() + ttl if ttl else _FOREVER, item[1])
        return True

    async def _delete(self, key: str, _conn: Any = None) -> int:
        return self.delete_nowait(key)

    async def _clear(self, namespace: str | None = None, _conn: Any = None) -> bool:
        if namespace:
            self.delete_matching(f"{namespace}*")
        else:
            self._data.clear()
        return True

    async def _raw(
        self, command: str, *args: Any, encoding: str = "utf-8", _conn: Any = None, **kwargs: Any
    ) -> Any:
        return getattr(self._data, command)(*args, **kwargs)

    async def _redlock_release(self, key: str, value: Any) -> int:
        if self.get_nowait(key) == value:
            self._data.pop(key, None)
            return 1
        return 0
