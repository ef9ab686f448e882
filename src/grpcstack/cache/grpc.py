"""GrpcCache: the server's response cache, built from settings (the seeds' GrpcCache)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from betterproto2 import casing
from grpclib.const import Cardinality
from prometheus_client import CollectorRegistry

from .decorator import BINDING_ATTR, Binding, CacheSpec, cache_specs, key_material
from .keys import method_prefix, request_key
from .memory import LRUMemoryCache
from .metrics import CacheMetrics
from .tiered import Tier, TieredCache

if TYPE_CHECKING:
    from ..resources import Resources
    from ..settings import ServerSettings

log = logging.getLogger("grpcstack.cache")


class GrpcCache:
    def __init__(
        self,
        tiered: TieredCache,
        *,
        schema: str = "1",
        default_ttl: float = 300,
        enabled: bool = True,
    ) -> None:
        self.tiered = tiered
        self.schema = schema
        self.default_ttl = default_ttl
        self.enabled = enabled
        #: messages of cached NOT_FOUND answers, replayed on negative hits (bounded)
        self.not_found: dict[str, str | None] = _BoundedDict(10_000)
        #: /pkg.Svc/Method -> (service, spec) of every bound @cached method
        self.served: dict[str, tuple[Any, CacheSpec]] = {}

    @classmethod
    def from_settings(
        cls,
        settings: ServerSettings,
        resources: Resources | None = None,
        registry: CollectorRegistry | None = None,
    ) -> GrpcCache:
        """L1 always; L2 when REDIS_URL is set; L3 when GRPC_CACHE_L3_ENABLED."""
        s = settings
        timeout = s.GRPC_CACHE_TIER_TIMEOUT_SECONDS
        tiers = [Tier("l1", LRUMemoryCache(s.GRPC_CACHE_L1_MAX_SIZE), s.GRPC_CACHE_L1_TTL_SECONDS)]
        pubsub = None
        if resources is not None and resources.redis_configured:
            from .redis import SharedRedisCache

            client = resources.redis(s.REDIS_DB_GRPC)
            tiers.append(Tier("l2", SharedRedisCache(client), s.GRPC_CACHE_L2_TTL_SECONDS, timeout))
            pubsub = client
        if resources is not None and s.GRPC_CACHE_L3_ENABLED:
            from .duckdb import DuckDBCache

            tiers.append(
                Tier(
                    "l3", DuckDBCache(resources.duckdb()), s.GRPC_CACHE_L3_TTL_SECONDS, timeout * 4
                )
            )
        tiered = TieredCache(
            tiers,
            service=s.SERVICE_NAME,
            namespace=f"grpcstack:cache:{s.GRPC_CACHE_NAMESPACE or s.SERVICE_NAME}",
            metrics=CacheMetrics(registry),
            pubsub=pubsub,
            negative_ttl=s.GRPC_CACHE_NEGATIVE_TTL_SECONDS,
        )
        return cls(
            tiered,
            schema=s.GRPC_CACHE_SCHEMA_VERSION,
            default_ttl=s.GRPC_CACHE_DEFAULT_TTL,
            enabled=s.GRPC_CACHE_ENABLED,
        )

    def bind(self, service: Any) -> bool:
        """Attach this cache to a service's @cached methods; False if it has none."""
        specs = cache_specs(service)
        if not specs:
            return False
        by_attr = {}
        for path, handler in service.__mapping__().items():
            attr = casing.safe_snake_case(path.rsplit("/", 1)[1])
            by_attr[attr] = (path, handler)
        methods: dict[str, tuple[str, type]] = {}
        for spec in specs:
            if spec.attr not in by_attr:
                raise TypeError(f"@cached {type(service).__name__}.{spec.attr} is not an RPC")
            path, handler = by_attr[spec.attr]
            if handler.cardinality is not Cardinality.UNARY_UNARY:
                raise TypeError(
                    f"@cached needs a unary method; {path} is {handler.cardinality.name}"
                )
            methods[spec.attr] = (path, handler.reply_type)
            self.served[path] = (service, spec)
        setattr(service, BINDING_ATTR, Binding(self, methods))
        return True

    async def start(self) -> None:
        await self.tiered.start()

    async def close(self) -> None:
        await self.tiered.close()

    # --- invalidation helpers for service code ----------------------------------------

    async def invalidate_request(
        self,
        method: str,
        message: Any,
        *,
        extra: list[str] | None = None,
        user_id: str | None = None,
    ) -> None:
        parts = ([f"u={user_id}"] if user_id else []) + (extra or [])
        bound = self.served.get(method)
        material = key_material(bound[1], bound[0], message) if bound is not None else None
        key = request_key(method, message, schema=self.schema, extra=parts, material=material)
        await self.tiered.delete(key, method=method)

    async def invalidate_method(self, method: str) -> dict[str, int]:
        return await self.tiered.invalidate(
            f"{method_prefix(method, self.schema)}:*", method=method
        )


class _BoundedDict(dict):  # type: ignore[type-arg]
    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def __setitem__(self, key: Any, value: Any) -> None:
        if len(self) >= self.limit:
            self.pop(next(iter(self)))
        super().__setitem__(key, value)
