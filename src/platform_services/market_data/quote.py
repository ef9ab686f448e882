"""GetStockQuote: the last close and its change, cached 1 minute in L1, L2 and DuckDB (L3)."""

from __future__ import annotations

from typing import Any

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from gen.marketdata.v1 import GetStockQuoteRequest, StockQuote
from grpcstack.cache import cached

from .schema import normalize_symbol

SERVICE_NAME = "marketdata.v1.MarketDataService"
GET_QUOTE = f"/{SERVICE_NAME}/GetStockQuote"
QUOTE_TTL_SECONDS = 60


def quote_key(_service: Any, message: GetStockQuoteRequest) -> str:
    return message.symbol.strip().upper()  # "aapl" and "AAPL" share one entry


class QuoteMixin:
    store: Any
    cache: Any

    @cached(ttl=QUOTE_TTL_SECONDS, tiers=("l1", "l2", "l3"), key=quote_key)
    async def get_stock_quote(self, message: GetStockQuoteRequest) -> StockQuote:
        symbol = normalize_symbol(message.symbol)
        rows = await self.store.query(
            "SELECT epoch(ts)::BIGINT, close FROM bars WHERE symbol = ? ORDER BY ts DESC LIMIT 2",
            [symbol],
        )
        if not rows:
            raise GRPCError(Status.NOT_FOUND, f"symbol: unknown symbol {symbol!r}")
        time, price = rows[0]
        previous = rows[1][1] if len(rows) > 1 else price
        change = price - previous
        return StockQuote(
            symbol=symbol,
            price=price,
            previous_close=previous,
            change=change,
            change_percent=change / previous * 100 if previous else 0.0,
            time=time,
        )

    async def symbols_changed(self, symbols: set[str]) -> None:
        """New bars: drop those symbols' cached quotes (and cached NOT_FOUNDs) at once."""
        if self.cache is None:
            return
        for symbol in sorted(symbols):
            await self.cache.invalidate_request(GET_QUOTE, GetStockQuoteRequest(symbol=symbol))
