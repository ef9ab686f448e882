"""The server's own record of a call: what it counted in ``grpc_server_*``, read from its registry.

A client can raise a status by itself (its own deadline timer, its own cancel); asserting what the
SERVER sent and counted is what proves the server's behaviour. Tests take a snapshot, make calls,
then wait until the server's counts moved by exactly the expected amounts.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from waiting import eventually

Key = tuple[str, str]  # (method, Go code name)


def handled(server: Any, service: str) -> Counter[Key]:
    """Every non-zero ``grpc_server_handled_total`` sample of ``service``: (method, code) -> n."""
    counts: Counter[Key] = Counter()
    for family in server.metrics_registry.collect():
        for sample in family.samples:
            if sample.name != "grpc_server_handled_total" or not sample.value:
                continue
            if sample.labels["grpc_service"] == service:
                key = (sample.labels["grpc_method"], sample.labels["grpc_code"])
                counts[key] += int(sample.value)
    return counts


def in_flight(server: Any, service: str) -> int:
    total = 0
    for family in server.metrics_registry.collect():
        for sample in family.samples:
            if sample.name == "grpc_server_in_flight" and sample.labels["grpc_service"] == service:
                total += int(sample.value)
    return total


def delta(after: Counter[Key], before: Counter[Key]) -> dict[Key, int]:
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


async def server_counted(
    server: Any,
    service: str,
    before: Counter[Key],
    expected: dict[Key, int],
    timeout: float | None = None,
) -> None:
    """Wait until the server finished every call of ``service`` and its counts since ``before``
    are exactly ``expected``; fail with what it counted instead."""

    def done() -> bool:
        return (
            in_flight(server, service) == 0 and delta(handled(server, service), before) == expected
        )

    try:
        await eventually(done) if timeout is None else await eventually(done, timeout)
    except AssertionError:
        got = delta(handled(server, service), before)
        raise AssertionError(
            f"server counted {got}, expected {expected}; in flight {in_flight(server, service)}"
        ) from None
