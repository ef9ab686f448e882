"""What the server attaches to a service with @cached methods, and what the decorator needs of
the cache it finds there (a protocol: the decorator never imports the server's GrpcCache)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from grpclib.const import Status

from .tiered import TieredCache

BINDING_ATTR = "_grpcstack_cache"


class BoundCache(Protocol):
    """The part of GrpcCache a cached method uses."""

    tiered: TieredCache
    schema: str
    default_ttl: float
    enabled: bool

    def final_status(self, exc: Exception) -> tuple[Status, str]: ...


@dataclass
class Binding:
    """A service's cache and, per method, its path and reply type."""

    cache: BoundCache
    methods: dict[str, tuple[str, type]]  # python attribute -> (/pkg.Svc/Method, reply type)
