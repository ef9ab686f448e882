"""GrpcCache: the server's response cache, built from settings (the seeds' GrpcCache)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from betterproto2 import casing
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError
from prometheus_client import CollectorRegistry

from ..context import current_call
from ..middleware.concurrency import ConcurrencyLimitMiddleware
from ..middleware.errors import ErrorHandlingMiddleware
from .binding import BINDING_ATTR, Binding
from .decorator import CacheSpec, cache_specs, caller_scope, key_material
from .keys import method_prefix, request_key
from .memory import LRUMemoryCache
from .metrics import CacheMetrics
from .tiered import Tier, TieredCache

if TYPE_CHECKING:
    from ..middleware.chain import MiddlewareChain
    from ..resources import Resources
    from ..settings import ServerSettings

log = logging.getLogger("grpcstack.cache")


class UnknownCachedMethod(LookupError):
    """An invalidation named a method that is not a served @cached method."""


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
        #: /pkg.Svc/Method -> (service, spec) of every bound @cached method
        self.served: dict[str, tuple[Any, CacheSpec]] = {}
        #: maps a handler's exception to the status the client sees (the server's own rules;
        #: without the error handling, only a GRPCError carries a status)
        self.errors: ErrorHandlingMiddleware | None = None
        self._concurrency: ConcurrencyLimitMiddleware | None = None
        tiered.on_load = self._hand_over_slot

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
        pubsub = subscriber = None
        if resources is not None and resources.redis_configured:
            from redis.asyncio import Redis

            from .redis import SharedRedisCache

            client = resources.redis(s.REDIS_DB_GRPC)
            l2 = SharedRedisCache(client, fast=resources.redis_multiplexed(s.REDIS_DB_GRPC))
            tiers.append(Tier("l2", l2, s.GRPC_CACHE_L2_TTL_SECONDS, timeout))
            pubsub = client
            # the listener's own connection: an idle subscription must not hit a socket timeout
            assert s.REDIS_URL is not None
            subscriber = Redis.from_url(
                s.REDIS_URL,
                db=s.REDIS_DB_GRPC,
                socket_timeout=None,
                socket_connect_timeout=s.REDIS_CONNECT_TIMEOUT_SECONDS,
                socket_keepalive=True,
                health_check_interval=30,
            )
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
            subscriber=subscriber,
            negative_ttl=s.GRPC_CACHE_NEGATIVE_TTL_SECONDS,
            load_timeout=s.GRPC_CACHE_LOAD_TIMEOUT_SECONDS,
            finish_orphaned=s.GRPC_CACHE_FINISH_ORPHANED_LOADS,
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

    def attach(self, chain: MiddlewareChain) -> None:
        """Use the server's error rules for negative caching; loads hold concurrency slots."""
        for middleware in chain.middlewares:
            if isinstance(middleware, ErrorHandlingMiddleware):
                self.errors = middleware
            elif isinstance(middleware, ConcurrencyLimitMiddleware):
                self._concurrency = middleware

    def final_status(self, exc: Exception) -> tuple[Status, str]:
        """The status and message the client would see for ``exc``."""
        if isinstance(exc, GRPCError):
            return exc.status, exc.message or ""
        if self.errors is None:
            return Status.UNKNOWN, ""
        rule = self.errors.rule_for(exc)
        return rule.status, rule.message(exc) if callable(rule.message) else rule.message

    def _hand_over_slot(self) -> Callable[[], None] | None:
        """A load counts against the concurrency limit while it runs, also after its caller
        has left: the caller's slot passes to the load, which releases it when it ends."""
        call = current_call()
        if self._concurrency is None or call is None:
            return None
        return self._concurrency.hand_over(call)

    async def start(self) -> None:
        await self.tiered.start()

    async def close(self) -> None:
        await self.tiered.close()

    # --- invalidation helpers for service code ----------------------------------------

    def _resolve(self, method: str | Callable[..., Any]) -> tuple[str, Any, CacheSpec]:
        """A served path ("/pkg.Svc/Method") or a bound @cached method (``service.get_item``)."""
        if not isinstance(method, str):
            spec = getattr(method, "__grpcstack_cache__", None)
            binding = getattr(getattr(method, "__self__", None), BINDING_ATTR, None)
            if spec is None or binding is None or spec.attr not in binding.methods:
                raise UnknownCachedMethod(f"{method!r} is not a bound @cached method")
            method = binding.methods[spec.attr][0]
        bound = self.served.get(method)
        if bound is None:
            known = ", ".join(sorted(self.served)) or "none"
            raise UnknownCachedMethod(f"{method!r} is not a served @cached method (known: {known})")
        return method, bound[0], bound[1]

    async def invalidate_request(
        self,
        method: str | Callable[..., Any],
        message: Any,
        *,
        user_id: str | None = None,
    ) -> None:
        """Drop one request's entry: on a shared method its one entry; on a per-caller method
        ``user_id``'s entry, or, without ``user_id``, every caller's: nothing indexes which
        callers hold that request, so the method's generation moves (coarse, never stale)."""
        path, service, spec = self._resolve(method)
        if not spec.shared and user_id is None:
            await self.tiered.invalidate_generation(path, f"{method_prefix(path, self.schema)}:*")
            return
        extra = [] if spec.shared else [caller_scope(_User(user_id))]
        material = key_material(spec, service, message)
        key = request_key(path, message, schema=self.schema, extra=extra, material=material)
        await self.tiered.delete(key, method=path)

    async def invalidate_method(self, method: str | Callable[..., Any]) -> dict[str, int]:
        """Drop every entry of a method, in every process: its generation moves on."""
        path, _, _ = self._resolve(method)
        return await self.tiered.invalidate_generation(
            path, f"{method_prefix(path, self.schema)}:*"
        )


class _User:
    def __init__(self, user_id: str | None) -> None:
        self.user_id = user_id
