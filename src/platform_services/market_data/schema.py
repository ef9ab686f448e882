"""The bars table, bar validation and the intervals GetBars aggregates to."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from grpclib.const import Status
from grpclib.exceptions import GRPCError

CREATE_BARS = """
CREATE TABLE IF NOT EXISTS bars (
    symbol VARCHAR NOT NULL,
    ts TIMESTAMP NOT NULL,
    open DOUBLE NOT NULL,
    high DOUBLE NOT NULL,
    low DOUBLE NOT NULL,
    close DOUBLE NOT NULL,
    volume DOUBLE NOT NULL,
    PRIMARY KEY (symbol, ts)
)
"""

SYMBOL = re.compile(r"^[A-Z0-9][A-Z0-9._-]{0,19}$")
SYMBOL_SQL = "^[A-Z0-9][A-Z0-9._-]{0,19}$"
MAX_TIME = 32_503_680_000  # 3000-01-01: beyond is a unit mistake (ms or us sent as seconds)

INTERVALS = {"": "1 day", "1d": "1 day", "1w": "1 week", "1mo": "1 month"}


def invalid(message: str) -> GRPCError:
    return GRPCError(Status.INVALID_ARGUMENT, message)


def normalize_symbol(value: str, field: str = "symbol") -> str:
    symbol = value.strip().upper()
    if not symbol:
        raise invalid(f"{field}: required")
    if not SYMBOL.match(symbol):
        raise invalid(f"{field}: {value[:40]!r} is not a symbol (A-Z, 0-9, '.', '_', '-'; 1-20)")
    return symbol


def interval_sql(value: str) -> str:
    try:
        return INTERVALS[value.strip().lower()]
    except KeyError:
        raise invalid(f"interval: {value[:20]!r} is not one of 1d, 1w, 1mo") from None


def time_range(start: int, end: int) -> tuple[int, int]:
    """[start, end] in seconds; 0 means open-ended on that side."""
    if start < 0:
        raise invalid(f"start: must not be negative, got {start}")
    if end < 0:
        raise invalid(f"end: must not be negative, got {end}")
    if start > MAX_TIME or end > MAX_TIME:
        raise invalid("start, end: seconds since the epoch expected (is this milliseconds?)")
    end = end or MAX_TIME
    if start > end:
        raise invalid(f"start: {start} is after end {end}")
    return start, end


@dataclass(frozen=True)
class Row:
    symbol: str
    time: int
    open: float
    high: float
    low: float
    close: float
    volume: float

    def params(self) -> tuple[Any, ...]:
        return (
            self.symbol,
            self.time,
            self.open,
            self.high,
            self.low,
            self.close,
            self.volume,
        )


def check_bar(bar: Any) -> Row | str:
    """A valid row, or the reason the bar is rejected."""
    symbol = bar.symbol.strip().upper()
    if not SYMBOL.match(symbol):
        return f"symbol: {bar.symbol[:40]!r} is not a symbol"
    if not 0 < bar.time <= MAX_TIME:
        return f"time: {bar.time} is not seconds since the epoch"
    prices = {"open": bar.open, "high": bar.high, "low": bar.low, "close": bar.close}
    for name, value in prices.items():
        if not math.isfinite(value):
            return f"{name}: {value} is not a finite number"
        if value <= 0:
            return f"{name}: must be positive, got {value:g}"
    if not math.isfinite(bar.volume) or bar.volume < 0:
        return f"volume: must be a finite number >= 0, got {bar.volume:g}"
    if bar.low > bar.high:
        return f"low: {bar.low:g} is above high {bar.high:g}"
    if not bar.low <= min(bar.open, bar.close) or not max(bar.open, bar.close) <= bar.high:
        return "open, close: must lie within [low, high]"
    return Row(symbol, bar.time, bar.open, bar.high, bar.low, bar.close, bar.volume)


def write_rows(cur: Any, rows: list[Row], chunk: int = 500) -> int:
    """Upsert rows in ONE transaction (nothing half-written); later duplicates win."""
    unique = list({(r.symbol, r.time): r for r in rows}.values())
    cur.execute("BEGIN TRANSACTION")
    try:
        for i in range(0, len(unique), chunk):
            part = unique[i : i + chunk]
            values = ", ".join(
                ["(?, make_timestamp(CAST(? AS BIGINT) * 1000000), ?, ?, ?, ?, ?)"] * len(part)
            )
            params = [p for row in part for p in row.params()]
            cur.execute(f"INSERT OR REPLACE INTO bars VALUES {values}", params)
        cur.execute("COMMIT")
    except BaseException:
        cur.execute("ROLLBACK")
        raise
    return len(unique)
