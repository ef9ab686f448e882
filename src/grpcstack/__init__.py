"""grpcstack: an asyncio-native gRPC service stack on grpclib and betterproto2."""

from .health import HealthService
from .resources import Resources
from .server import AsyncBaseServer
from .settings import ServerSettings, SettingsError

__all__ = ["AsyncBaseServer", "HealthService", "Resources", "ServerSettings", "SettingsError"]
__version__ = "0.1.0"
