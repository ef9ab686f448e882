"""One tier of the tiered cache (its own module: the invalidation mixin and the cache use it)."""

from __future__ import annotations

from dataclasses import dataclass

from aiocache.base import BaseCache


@dataclass
class Tier:
    name: str  # metric label: l1, l2, l3
    cache: BaseCache
    ttl: float  # seconds this tier keeps a value at most
    timeout: float | None = None  # per-operation budget (remote tiers)
