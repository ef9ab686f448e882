"""The indicator service's one call to the market data service, over gRPC.

This module is the only place the indicator service talks to another service. The call carries
the caller's remaining deadline (or INDICATOR_CALL_TIMEOUT_SECONDS when it has none), its
correlation id and its identity (user-id / authorization metadata), so the market data side
logs, limits and authorises it as the original caller's call.

It uses a grpclib Channel with the stack's codec today; grpcstack's own Client replaces it here
when that lands, and nothing else changes.
"""

from __future__ import annotations

from collections.abc import Callable

from grpclib.client import Channel
from grpclib.const import Status
from grpclib.encoding.proto import ProtoStatusDetailsCodec
from grpclib.exceptions import GRPCError, StreamTerminatedError

from gen.marketdata.v1 import Bar, GetBarsRequest, MarketDataServiceStub
from grpcstack.codec import StackCodec
from grpcstack.context import current_call, outgoing_metadata

FORWARDED = ("user-id", "authorization")


class MarketDataClient:
    def __init__(self, target: Callable[[], tuple[str, int]], *, default_timeout: float) -> None:
        self._target = target
        self._default_timeout = default_timeout
        self._channel: Channel | None = None

    def _stub(self) -> MarketDataServiceStub:
        if self._channel is None:
            host, port = self._target()
            self._channel = Channel(
                host,
                port,
                codec=StackCodec(),  # type: ignore[arg-type]
                status_details_codec=ProtoStatusDetailsCodec(),
            )
        return MarketDataServiceStub(self._channel)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def _call_options(self) -> tuple[float, dict[str, str]]:
        metadata = dict(outgoing_metadata())
        timeout = self._default_timeout
        call = current_call()
        if call is not None:
            remaining = call.time_remaining()
            if remaining is not None:
                timeout = min(timeout, remaining)
            for key in FORWARDED:
                value = call.metadata.get(key)
                if value is not None and isinstance(value, str):
                    metadata[key] = value
        return timeout, metadata

    async def get_bars(self, symbol: str, start: int, end: int, interval: str) -> list[Bar]:
        timeout, metadata = self._call_options()
        if timeout <= 0:
            raise GRPCError(Status.DEADLINE_EXCEEDED, "no time left to fetch market data")
        request = GetBarsRequest(symbol=symbol, start=start, end=end, interval=interval)
        try:
            return [
                bar
                async for bar in self._stub().get_bars(request, timeout=timeout, metadata=metadata)
            ]
        except GRPCError as err:
            if err.status in (Status.NOT_FOUND, Status.INVALID_ARGUMENT):
                raise  # the caller's own mistake, with the field it names
            if err.status is Status.DEADLINE_EXCEEDED:
                raise GRPCError(
                    Status.DEADLINE_EXCEEDED, "market data: deadline exceeded"
                ) from None
            raise GRPCError(
                Status.UNAVAILABLE, f"market data service failed: {err.status.name}"
            ) from None
        except TimeoutError:
            raise GRPCError(Status.DEADLINE_EXCEEDED, "market data: deadline exceeded") from None
        except (OSError, StreamTerminatedError) as exc:
            raise GRPCError(
                Status.UNAVAILABLE, f"market data service unreachable: {type(exc).__name__}"
            ) from None
