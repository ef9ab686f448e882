"""Event-based middleware (in place of grpcio interceptors), one per module.

Default chain, each switchable by its GRPC_ENABLE_* setting: Metrics, Auth, RateLimit,
CorrelationId (the seeds' "Metadata"), Logging, ErrorHandling; plus ConcurrencyLimit after
Metrics when GRPC_MAX_CONCURRENT_RPCS is set, and Tracing (``middleware.tracing``, imported only
then: it needs ``grpcstack[otel]``) right after Metrics when GRPC_TRACING turns it on. See
``AsyncBaseServer.middlewares()``.
"""

from .access_log import AccessLogMiddleware
from .auth import AuthMiddleware, HmacTokenVerifier, TrustedHeaderVerifier, make_token
from .base import (
    Middleware,
    Selector,
    all_but,
    all_methods,
    exclude,
    methods,
    not_health_or_reflection,
    services,
)
from .chain import MiddlewareChain
from .concurrency import ConcurrencyLimitMiddleware
from .correlation import CorrelationIdMiddleware
from .errors import ErrorHandlingMiddleware, ErrorRule
from .metrics import MetricsMiddleware
from .ratelimit import RateLimitMiddleware

__all__ = [
    "AccessLogMiddleware",
    "AuthMiddleware",
    "ConcurrencyLimitMiddleware",
    "CorrelationIdMiddleware",
    "ErrorHandlingMiddleware",
    "ErrorRule",
    "HmacTokenVerifier",
    "MetricsMiddleware",
    "Middleware",
    "MiddlewareChain",
    "RateLimitMiddleware",
    "Selector",
    "TrustedHeaderVerifier",
    "all_but",
    "all_methods",
    "exclude",
    "make_token",
    "methods",
    "not_health_or_reflection",
    "services",
]
