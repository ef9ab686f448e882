"""The indicators the service computes: their parameters, defaults, limits and outputs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import compute


@dataclass(frozen=True)
class Param:
    name: str
    description: str
    default: float
    integer: bool = True
    maximum: float = 1000


@dataclass(frozen=True)
class Indicator:
    name: str
    description: str
    params: tuple[Param, ...]
    outputs: tuple[str, ...]
    run: Callable[[Sequence[float], dict[str, float]], tuple[compute.Series, ...]]


def _period(default: int) -> Param:
    return Param("period", "bars in the window", default)


INDICATORS: dict[str, Indicator] = {
    i.name: i
    for i in [
        Indicator(
            "sma",
            "Simple moving average of the close",
            (_period(20),),
            ("sma",),
            lambda v, p: (compute.sma(v, int(p["period"])),),
        ),
        Indicator(
            "ema",
            "Exponential moving average of the close (seeded with the SMA)",
            (_period(20),),
            ("ema",),
            lambda v, p: (compute.ema(v, int(p["period"])),),
        ),
        Indicator(
            "rsi",
            "Relative strength index (Wilder's smoothing), 0-100",
            (_period(14),),
            ("rsi",),
            lambda v, p: (compute.rsi(v, int(p["period"])),),
        ),
        Indicator(
            "macd",
            "Moving average convergence divergence",
            (
                Param("fast", "fast EMA period", 12),
                Param("slow", "slow EMA period", 26),
                Param("signal", "signal EMA period", 9),
            ),
            ("macd", "signal", "histogram"),
            lambda v, p: compute.macd(v, int(p["fast"]), int(p["slow"]), int(p["signal"])),
        ),
        Indicator(
            "bollinger",
            "Bollinger bands: SMA +- num_std population standard deviations",
            (_period(20), Param("num_std", "band width in standard deviations", 2, False, 10)),
            ("upper", "middle", "lower"),
            lambda v, p: compute.bollinger(v, int(p["period"]), p["num_std"]),
        ),
    ]
}


def resolve_params(indicator: Indicator, given: dict[str, float]) -> dict[str, float] | str:
    """Defaults filled in and limits checked; a message naming the parameter otherwise."""
    known = {p.name for p in indicator.params}
    unknown = sorted(set(given) - known)
    if unknown:
        return (
            f"parameters: {indicator.name} has no parameter {unknown[0]!r} "
            f"(it takes {', '.join(sorted(known))})"
        )
    values: dict[str, float] = {}
    for p in indicator.params:
        value = given.get(p.name, p.default)
        if value != value or not 0 < value <= p.maximum:  # NaN fails the first test
            return f"parameters.{p.name}: must be within (0, {p.maximum:g}], got {value}"
        if p.integer and value != int(value):
            return f"parameters.{p.name}: must be a whole number, got {value}"
        values[p.name] = value
    if indicator.name == "macd" and values["fast"] >= values["slow"]:
        return f"parameters.fast: must be below slow ({values['fast']:g} >= {values['slow']:g})"
    return values
