"""GetBars: a range scan aggregated to the interval inside DuckDB, streamed oldest first."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from gen.marketdata.v1 import Bar, GetBarsRequest

from .schema import interval_sql, invalid, normalize_symbol, time_range

AGGREGATE = """
SELECT epoch(time_bucket(INTERVAL '{interval}', ts))::BIGINT AS t,
       arg_min(open, ts), max(high), min(low), arg_max(close, ts), sum(volume)
FROM bars
WHERE symbol = ?
  AND ts BETWEEN make_timestamp(CAST(? AS BIGINT) * 1000000)
             AND make_timestamp(CAST(? AS BIGINT) * 1000000)
GROUP BY t ORDER BY t LIMIT ?
"""


class BarsMixin:
    store: Any
    max_bars: int

    async def known_symbol(self, symbol: str) -> bool:
        rows = await self.store.query("SELECT 1 FROM bars WHERE symbol = ? LIMIT 1", [symbol])
        return bool(rows)

    async def require_symbol(self, symbol: str) -> None:
        if not await self.known_symbol(symbol):
            raise GRPCError(Status.NOT_FOUND, f"symbol: unknown symbol {symbol!r}")

    async def fetch_bars(self, message: GetBarsRequest) -> list[Bar]:
        symbol = normalize_symbol(message.symbol)
        interval = interval_sql(message.interval)  # one of a fixed set: safe in the SQL text
        start, end = time_range(message.start, message.end)
        await self.require_symbol(symbol)
        rows = await self.store.query(
            AGGREGATE.format(interval=interval), [symbol, start, end, self.max_bars + 1]
        )
        if len(rows) > self.max_bars:
            raise invalid(
                f"start, end: more than {self.max_bars} bars in range; narrow it or use a "
                "larger interval"
            )
        return [
            Bar(symbol=symbol, time=t, open=o, high=h, low=lo, close=c, volume=v)
            for t, o, h, lo, c, v in rows
        ]

    async def get_bars(self, message: GetBarsRequest) -> AsyncIterator[Bar]:
        for bar in await self.fetch_bars(message):
            yield bar
