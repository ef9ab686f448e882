"""Retry policy, backoff, server pushback and the retry throttle, as gRFC A6 defines them.

An attempt that failed with a retryable status is retried after a random delay in
``[0, min(initial_backoff * multiplier**(n-1), max_backoff)]`` (full jitter), unless the server
pushed back: ``grpc-retry-pushback-ms`` (a negative or malformed value means "do not retry"), or
on RESOURCE_EXHAUSTED this stack's ``retry-after-ms`` trailer or a ``google.rpc.RetryInfo``
detail, which then set the delay exactly. A call is never retried past its deadline, after it
committed (response headers received, i.e. with the first response message), or while the
throttle is below half of its tokens.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from grpclib.const import Status

PUSHBACK_KEY = "grpc-retry-pushback-ms"
RETRY_AFTER_KEY = "retry-after-ms"


def parse_status(name: str | int | Status) -> Status:
    if isinstance(name, Status):
        return name
    if isinstance(name, int) or name.isdigit():
        return Status(int(name))
    try:
        return Status[name.upper()]
    except KeyError:
        raise ValueError(f"unknown gRPC status {name!r}") from None


@dataclass(frozen=True)
class RetryPolicy:
    """gRFC A6 retryPolicy. ``max_attempts`` counts the first attempt (1 = no retries); A6 caps
    it at 5."""

    max_attempts: int = 3
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    backoff_multiplier: float = 2.0
    retryable_status_codes: frozenset[Status] = field(
        default_factory=lambda: frozenset({Status.UNAVAILABLE})
    )

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts:
            raise ValueError("max_attempts must be >= 1")
        if self.initial_backoff <= 0 or self.max_backoff <= 0 or self.backoff_multiplier <= 0:
            raise ValueError("backoffs and multiplier must be > 0")
        codes = frozenset(parse_status(c) for c in self.retryable_status_codes)
        object.__setattr__(self, "retryable_status_codes", codes)
        object.__setattr__(self, "max_attempts", min(self.max_attempts, 5))

    @classmethod
    def of(cls, codes: Iterable[str | int | Status] = ("UNAVAILABLE",), **kw: Any) -> RetryPolicy:
        return cls(retryable_status_codes=frozenset(parse_status(c) for c in codes), **kw)

    def backoff(self, retry_number: int, rng: random.Random = random._inst) -> float:  # type: ignore[attr-defined]
        """Delay before retry ``retry_number`` (1 = the first retry), full jitter."""
        cap = min(
            self.initial_backoff * self.backoff_multiplier ** (retry_number - 1), self.max_backoff
        )
        return rng.uniform(0, cap)


NO_RETRY = RetryPolicy(max_attempts=1)


def pushback(status: Status, trailers: Mapping[str, Any] | None, details: Any) -> float | None:
    """The delay the server asked for in seconds; -1.0 means "do not retry"; None: no opinion."""
    if trailers:
        raw = trailers.get(PUSHBACK_KEY)
        if raw is not None:
            try:
                ms = int(raw)
            except (TypeError, ValueError):
                return -1.0
            return -1.0 if ms < 0 else ms / 1000
        if status is Status.RESOURCE_EXHAUSTED:
            raw = trailers.get(RETRY_AFTER_KEY)
            if raw is not None:
                try:
                    return max(0.0, int(raw) / 1000)
                except (TypeError, ValueError):
                    pass
    if status is Status.RESOURCE_EXHAUSTED and details:
        for detail in details:
            delay = getattr(detail, "retry_delay", None)
            if delay is not None and type(detail).__name__ == "RetryInfo":
                return float(delay.seconds + delay.nanos / 1e9)
    return None


class RetryThrottle:
    """gRFC A6 token bucket, per client and target: a failure costs 1 token, a success returns
    ``token_ratio``; retries (and hedges) are allowed only while tokens > max_tokens / 2."""

    __slots__ = ("max_tokens", "token_ratio", "tokens")

    def __init__(self, max_tokens: float = 10.0, token_ratio: float = 0.1) -> None:
        self.max_tokens = max_tokens
        self.token_ratio = token_ratio
        self.tokens = max_tokens

    def on_failure(self) -> None:
        self.tokens = max(0.0, self.tokens - 1)

    def on_success(self) -> None:
        self.tokens = min(self.max_tokens, self.tokens + self.token_ratio)

    @property
    def allows_retry(self) -> bool:
        return self.tokens > self.max_tokens / 2
