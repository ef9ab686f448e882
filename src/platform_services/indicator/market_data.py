"""The indicator service's one call to the market data service, through grpcstack.Client.

This module is the only place the indicator service talks to another service. The Client gives
the call the caller's remaining deadline (capped by INDICATOR_CALL_TIMEOUT_SECONDS, which also
applies when the caller has none), its correlation id and, with GRPC_CLIENT_FORWARD_IDENTITY
turned on here, the caller's identity (user-id / authorization metadata; README "Client",
propagation), so the market data side logs, limits and authorises it as the original caller's
call. GRPC_CLIENT_* settings (retries, connect timeout, TLS, ...) apply; the client's own identity
settings do not.
"""

from __future__ import annotations

from collections.abc import Callable

from grpclib.const import Status
from grpclib.exceptions import GRPCError
from prometheus_client import CollectorRegistry

from gen.marketdata.v1 import Bar, GetBarsRequest, MarketDataServiceStub
from grpcstack.client import Client, MethodConfig
from grpcstack.settings import ClientSettings

SERVICE = "marketdata.v1.MarketDataService"


class MarketDataClient:
    """``target()`` ("host:port") is asked on the first call: by default the market data
    service is the platform's own server, whose port is known only once it listens."""

    def __init__(
        self,
        target: Callable[[], str],
        *,
        default_timeout: float,
        settings: ClientSettings | None = None,
        metrics_registry: CollectorRegistry | None = None,
    ) -> None:
        self._target = target
        self._default_timeout = default_timeout
        self._settings = settings
        self._metrics_registry = metrics_registry
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            s = self._settings if self._settings is not None else ClientSettings.load()
            # the call is made as the caller, never as a configured identity
            s = s.model_copy(
                update={
                    "GRPC_CLIENT_FORWARD_IDENTITY": True,
                    "GRPC_CLIENT_USER_ID": None,
                    "GRPC_CLIENT_BEARER_TOKEN": None,
                }
            )
            self._client = Client(
                [self._target()],
                settings=s,
                methods={SERVICE: MethodConfig(timeout=self._default_timeout)},
                metrics_registry=self._metrics_registry,
            )
        return self._client

    async def aclose(self, grace: float = 0.0) -> None:
        if self._client is not None:
            await self._client.aclose(grace)
            self._client = None

    async def get_bars(self, symbol: str, start: int, end: int, interval: str) -> list[Bar]:
        request = GetBarsRequest(symbol=symbol, start=start, end=end, interval=interval)
        stub = self.client.stub(MarketDataServiceStub)
        try:
            return [bar async for bar in stub.get_bars(request)]
        except GRPCError as err:
            if err.status in (Status.NOT_FOUND, Status.INVALID_ARGUMENT):
                raise  # the caller's own mistake, with the field it names
            if err.status is Status.DEADLINE_EXCEEDED:
                raise GRPCError(
                    Status.DEADLINE_EXCEEDED, "market data: deadline exceeded"
                ) from None
            if err.status is Status.UNAVAILABLE:
                raise GRPCError(
                    Status.UNAVAILABLE, f"market data service unreachable: {err.message}"
                ) from None
            raise GRPCError(
                Status.UNAVAILABLE, f"market data service failed: {err.status.name}"
            ) from None
