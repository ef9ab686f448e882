"""Per-method call configuration (gRPC service config's methodConfig, in Python).

Keys are a full method ("/pkg.Service/Method") or a service ("pkg.Service"); the most specific
one wins, then the client's defaults (from ClientSettings)::

    Client(target, methods={
        "ocr.v1.OCRService": MethodConfig(timeout=30),
        "/ocr.v1.OCRService/CheckHealth": MethodConfig(timeout=2, retry=RetryPolicy(5)),
    })
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .retry import RetryPolicy


@dataclass(frozen=True)
class HedgingPolicy:
    """Send up to ``max_attempts`` copies of an idempotent unary call, ``hedging_delay`` apart,
    and take the first OK (or non-retryable) answer; the others are cancelled."""

    max_attempts: int = 2
    hedging_delay: float = 0.05
    non_fatal_status_codes: frozenset[object] = frozenset()

    def __post_init__(self) -> None:
        from .retry import parse_status

        if self.max_attempts < 1 or self.hedging_delay < 0:
            raise ValueError("max_attempts >= 1 and hedging_delay >= 0")
        codes = frozenset(parse_status(c) for c in self.non_fatal_status_codes)  # type: ignore[arg-type]
        object.__setattr__(self, "non_fatal_status_codes", codes)
        object.__setattr__(self, "max_attempts", min(self.max_attempts, 5))


@dataclass(frozen=True)
class MethodConfig:
    """``timeout``: default deadline in seconds (None: the client's); ``retry``: the method's
    retry policy (None: the client's); ``hedging`` instead of retry for idempotent unary calls;
    ``wait_for_ready``: while no target accepts a connection, wait (within the deadline) instead
    of failing with UNAVAILABLE."""

    timeout: float | None = None
    retry: RetryPolicy | None = None
    hedging: HedgingPolicy | None = None
    max_receive_message_length: int | None = None
    wait_for_ready: bool | None = None


def resolve(
    methods: Mapping[str, MethodConfig], method: str, default: MethodConfig
) -> MethodConfig:
    found = methods.get(method)
    service_cfg = methods.get(method.split("/")[1]) if method.count("/") == 2 else None
    if found is None and service_cfg is None:
        return default
    chain = [c for c in (found, service_cfg, default) if c is not None]

    def pick(name: str) -> object:
        for cfg in chain:
            value = getattr(cfg, name)
            if value is not None:
                return value
        return None

    return MethodConfig(
        timeout=pick("timeout"),  # type: ignore[arg-type]
        retry=pick("retry"),  # type: ignore[arg-type]
        hedging=pick("hedging"),  # type: ignore[arg-type]
        max_receive_message_length=pick("max_receive_message_length"),  # type: ignore[arg-type]
        wait_for_ready=pick("wait_for_ready"),  # type: ignore[arg-type]
    )
