"""grpcstack: an asyncio-native gRPC service stack on grpclib and betterproto2."""

from .client import Client
from .health import HealthService
from .resources import Resources
from .server import AsyncBaseServer
from .settings import ServerSettings, SettingsError

__all__ = [
    "AsyncBaseServer",
    "Client",
    "HealthService",
    "Resources",
    "ServerSettings",
    "SettingsError",
]
__version__ = "0.1.0"
