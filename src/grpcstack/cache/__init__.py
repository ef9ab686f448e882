"""The multi-tier response cache: L1 memory -> L2 Redis -> L3 DuckDB -> loader."""

from .decorator import cached
from .grpc import GrpcCache, UnknownCachedMethod
from .keys import canonical_bytes, request_key
from .memory import LRUMemoryCache
from .tiered import Negative, Tier, TieredCache

__all__ = [
    "GrpcCache",
    "LRUMemoryCache",
    "Negative",
    "Tier",
    "TieredCache",
    "UnknownCachedMethod",
    "cached",
    "canonical_bytes",
    "request_key",
]
