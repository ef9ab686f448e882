"""Sample data loaded on a platform's first start, so every method answers at once.

Deterministic: the same strategies (fixed ids) and the same year of daily bars (a seeded random
walk over the weekdays of 2025) on every machine. Loaded only into empty stores.
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

from .market_data.schema import Row, write_rows

SYMBOLS = {"AAPL": 190.0, "MSFT": 410.0, "005930": 72_000.0}
YEAR = 2025
USERS = ("alice", "bob")
SAMPLE_STRATEGIES = [
    (
        "Golden cross",
        "Trend following on two moving averages",
        [
            "sma(close, 20) > sma(close, 50)",
            "crosses_above(sma(close, 20), sma(close, 50)) and rsi(close, 14) < 70",
        ],
    ),
    (
        "RSI mean reversion",
        "Buy oversold, sell overbought",
        [
            "rsi(close, 14) < 30",
            "rsi(close, 14) < 30 and close > bollinger_lower(close, 20, 2)",
            "rsi(close, 10) < 25 or close < bollinger_lower(close, 20, 2.5)",
        ],
    ),
]


def strategy_id(user_index: int, strategy_index: int) -> str:
    """Fixed ids: 5eed + user + strategy (24 hex digits, like an ObjectId)."""
    return f"5eed{user_index:010x}{strategy_index:010x}"


def daily_bars(symbol: str, start_price: float, year: int = YEAR) -> list[Row]:
    rng = random.Random(f"{symbol}-{year}")
    day = dt.date(year, 1, 1)
    price = start_price
    rows = []
    while day.year == year:
        if day.weekday() < 5:
            open_ = price
            close = max(open_ * (1 + rng.gauss(0.0004, 0.015)), 0.01)
            high = max(open_, close) * (1 + abs(rng.gauss(0, 0.006)))
            low = min(open_, close) * (1 - abs(rng.gauss(0, 0.006)))
            volume = float(int(rng.lognormvariate(15, 0.4)))
            when = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp())
            rows.append(
                Row(
                    symbol,
                    when,
                    round(open_, 4),
                    round(high, 4),
                    round(low, 4),
                    round(close, 4),
                    volume,
                )
            )
            price = close
        day += dt.timedelta(days=1)
    return rows


async def load_bars(store: Any) -> int:
    if (await store.query("SELECT count(*) FROM bars"))[0][0]:
        return 0
    rows = [r for symbol, price in SYMBOLS.items() for r in daily_bars(symbol, price)]
    return int(await store.write(write_rows, rows))


async def load_strategies(db: Any) -> int:
    strategies, versions = db["strategies"], db["strategy_versions"]
    if await strategies.count_documents({}, limit=1):
        return 0
    created = int(dt.datetime(YEAR, 1, 2, tzinfo=dt.UTC).timestamp() * 1000)
    count = 0
    for u, user in enumerate(USERS, start=1):
        for s, (name, description, rules) in enumerate(SAMPLE_STRATEGIES, start=1):
            sid = strategy_id(u, s)
            await strategies.insert_one(
                {
                    "_id": sid,
                    "user_id": user,
                    "name": name,
                    "description": description,
                    "latest_seq": len(rules),
                    "created_at_ms": created,
                    "updated_at_ms": created,
                }
            )
            await versions.insert_many(
                [
                    {
                        "_id": f"{sid}:{seq}",
                        "strategy_id": sid,
                        "user_id": user,
                        "seq": seq,
                        "strategy_name": name,
                        "rule": rule,
                        "parameters": {"symbol": "AAPL"},
                        "note": f"sample version {seq}",
                        "created_at_ms": created + seq,
                    }
                    for seq, rule in enumerate(rules, start=1)
                ]
            )
            count += 1
    return count
