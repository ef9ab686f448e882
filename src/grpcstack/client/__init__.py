"""The stack's gRPC client: see :class:`Client` and README "Client"."""

from .call import ClientCall, RpcError
from .client import Client
from .config import HedgingPolicy, MethodConfig
from .metrics import ClientMetrics
from .middleware import ClientCallInfo, ClientMiddleware
from .retry import RetryPolicy, RetryThrottle

__all__ = [
    "Client",
    "ClientCall",
    "ClientCallInfo",
    "ClientMetrics",
    "ClientMiddleware",
    "HedgingPolicy",
    "MethodConfig",
    "RetryPolicy",
    "RetryThrottle",
    "RpcError",
]
