"""SMA, EMA, RSI, MACD and Bollinger bands over closing prices (plain Python, O(n)).

Each function returns one list per output, as long as the input, with None where the
indicator is not yet defined (its warm-up). Conventions are the common ones:

* EMA: smoothing 2 / (period + 1), seeded with the SMA of the first ``period`` values.
* RSI: Wilder's smoothing (1 / period), seeded with the mean gain and loss of the first
  ``period`` changes; 100 when there was no loss.
* MACD: EMA(fast) - EMA(slow); signal = EMA(signal) of MACD; histogram = MACD - signal.
* Bollinger: SMA(period) +- num_std population standard deviations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Series = list[float | None]


def sma(values: Sequence[float], period: int) -> Series:
    out: Series = [None] * len(values)
    total = 0.0
    for i, v in enumerate(values):
        total += v
        if i >= period:
            total -= values[i - period]
        if i >= period - 1:
            out[i] = total / period
    return out


def ema(values: Sequence[float], period: int) -> Series:
    out: Series = [None] * len(values)
    if len(values) < period:
        return out
    alpha = 2.0 / (period + 1)
    current = sum(values[:period]) / period
    out[period - 1] = current
    for i in range(period, len(values)):
        current = alpha * values[i] + (1 - alpha) * current
        out[i] = current
    return out


def _ema_defined(values: Series, period: int) -> Series:
    """EMA of a series with a leading warm-up of None."""
    first = next((i for i, v in enumerate(values) if v is not None), len(values))
    tail = ema([v for v in values[first:] if v is not None], period)
    return [None] * first + tail


def rsi(values: Sequence[float], period: int) -> Series:
    out: Series = [None] * len(values)
    if len(values) <= period:
        return out
    gains = losses = 0.0
    for i in range(1, period + 1):
        change = values[i] - values[i - 1]
        gains += max(change, 0.0)
        losses += max(-change, 0.0)
    avg_gain, avg_loss = gains / period, losses / period
    out[period] = _rsi(avg_gain, avg_loss)
    for i in range(period + 1, len(values)):
        change = values[i] - values[i - 1]
        avg_gain = (avg_gain * (period - 1) + max(change, 0.0)) / period
        avg_loss = (avg_loss * (period - 1) + max(-change, 0.0)) / period
        out[i] = _rsi(avg_gain, avg_loss)
    return out


def _rsi(gain: float, loss: float) -> float:
    if loss == 0:
        return 100.0
    return 100.0 - 100.0 / (1.0 + gain / loss)


def macd(values: Sequence[float], fast: int, slow: int, signal: int) -> tuple[Series, ...]:
    fast_ema, slow_ema = ema(values, fast), ema(values, slow)
    line: Series = [
        f - s if f is not None and s is not None else None
        for f, s in zip(fast_ema, slow_ema, strict=True)
    ]
    signal_line = _ema_defined(line, signal)
    histogram: Series = [
        m - s if m is not None and s is not None else None
        for m, s in zip(line, signal_line, strict=True)
    ]
    return line, signal_line, histogram


def bollinger(values: Sequence[float], period: int, num_std: float) -> tuple[Series, ...]:
    middle = sma(values, period)
    upper: Series = [None] * len(values)
    lower: Series = [None] * len(values)
    for i in range(period - 1, len(values)):
        mean = middle[i]
        assert mean is not None
        window = values[i - period + 1 : i + 1]
        std = math.sqrt(sum((v - mean) ** 2 for v in window) / period)
        upper[i], lower[i] = mean + num_std * std, mean - num_std * std
    return upper, middle, lower
