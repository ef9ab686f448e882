"""The multi-tier response cache: L1 memory -> L2 Redis -> L3 DuckDB -> loader."""

from .decorator import cached
from .grpc import GrpcCache
from .keys import canonical_bytes, request_key
from .memory import LRUMemoryCache
from .tiered import Tier, TieredCache

__all__ = [
    "GrpcCache",
    "LRUMemoryCache",
    "Tier",
    "TieredCache",
    "cached",
    "canonical_bytes",
    "request_key",
]
