"""IndicatorService: metadata (cached 1 h) and indicators over bars fetched over gRPC."""

from __future__ import annotations

import math

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from gen.indicator.v1 import (
    ComputeIndicatorRequest,
    ComputeIndicatorResponse,
    GetIndicatorMetadataRequest,
    GetIndicatorMetadataResponse,
    IndicatorMetadata,
    IndicatorParameter,
    IndicatorPoint,
    IndicatorServiceBase,
)
from grpcstack.cache import cached

from .catalog import INDICATORS, Indicator, resolve_params
from .market_data import MarketDataClient

SERVICE_NAME = "indicator.v1.IndicatorService"
METADATA_TTL_SECONDS = 3600


def _invalid(message: str) -> GRPCError:
    return GRPCError(Status.INVALID_ARGUMENT, message)


def to_metadata(indicator: Indicator) -> IndicatorMetadata:
    return IndicatorMetadata(
        name=indicator.name,
        description=indicator.description,
        parameters=[
            IndicatorParameter(name=p.name, description=p.description, default_value=p.default)
            for p in indicator.params
        ],
        outputs=list(indicator.outputs),
    )


class IndicatorService(IndicatorServiceBase):
    def __init__(self, market_data: MarketDataClient, *, max_bars: int = 10_000) -> None:
        self.market_data = market_data
        self.max_bars = max_bars

    @cached(ttl=METADATA_TTL_SECONDS, tiers=("l1", "l2"))
    async def get_indicator_metadata(
        self, message: GetIndicatorMetadataRequest
    ) -> GetIndicatorMetadataResponse:
        name = message.name.strip().lower()
        if not name:
            return GetIndicatorMetadataResponse(
                indicators=[to_metadata(i) for i in INDICATORS.values()]
            )
        indicator = INDICATORS.get(name)
        if indicator is None:
            raise GRPCError(
                Status.NOT_FOUND,
                f"name: unknown indicator {message.name[:40]!r} (known: {', '.join(INDICATORS)})",
            )
        return GetIndicatorMetadataResponse(indicators=[to_metadata(indicator)])

    async def compute_indicator(self, message: ComputeIndicatorRequest) -> ComputeIndicatorResponse:
        if not message.symbol.strip():
            raise _invalid("symbol: required")
        name = message.indicator.strip().lower()
        if not name:
            raise _invalid("indicator: required")
        indicator = INDICATORS.get(name)
        if indicator is None:
            raise _invalid(
                f"indicator: unknown indicator {message.indicator[:40]!r} "
                f"(known: {', '.join(INDICATORS)})"
            )
        params = resolve_params(indicator, dict(message.parameters))
        if isinstance(params, str):
            raise _invalid(params)
        if message.start > message.end > 0:
            raise _invalid(f"start: {message.start} is after end {message.end}")
        # the market data service validates symbol, range and interval and names the field
        bars = await self.market_data.get_bars(
            message.symbol, message.start, message.end, message.interval
        )
        if len(bars) > self.max_bars:
            raise _invalid(f"start, end: {len(bars)} bars, the limit is {self.max_bars}")
        closes = [b.close for b in bars]
        series = indicator.run(closes, params)
        points = []
        for i, bar in enumerate(bars):
            values = [s[i] for s in series]
            if all(v is not None and math.isfinite(v) for v in values):
                points.append(IndicatorPoint(time=bar.time, values=values))  # type: ignore[arg-type]
        return ComputeIndicatorResponse(
            symbol=bars[0].symbol if bars else message.symbol.strip().upper(),
            indicator=indicator.name,
            outputs=list(indicator.outputs),
            points=points,
            bars_used=len(bars),
        )
