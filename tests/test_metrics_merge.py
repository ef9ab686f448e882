"""The aggregating exporter's merge: samples with equal names and labels add up."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics
from prometheus_client.parser import text_string_to_metric_families

from grpcstack.metrics_merge import _Static, merge


def worker_exposition(calls: int, in_flight: int, trace_id: str | None = None) -> str:
    registry = CollectorRegistry()
    counter = Counter("calls", "Calls.", ["code"], registry=registry)
    counter.labels("OK").inc(calls)
    counter.labels("Internal").inc(1)
    Gauge("in_flight", "In flight.", registry=registry).set(in_flight)
    latency = Histogram("latency_seconds", "Latency.", buckets=(0.1, 1.0), registry=registry)
    for _ in range(calls):
        latency.observe(0.05, exemplar={"trace_id": trace_id} if trace_id else None)
    return openmetrics(registry).decode()


def samples(metrics: list[object]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(_Static(metrics))  # type: ignore[arg-type]
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_counters_gauges_and_histograms_add_up() -> None:
    merged = merge([worker_exposition(3, 2), worker_exposition(5, 1, trace_id="ab" * 16)])
    values = samples(merged)
    assert values[("calls_total", (("code", "OK"),))] == 8
    assert values[("calls_total", (("code", "Internal"),))] == 2
    assert values[("in_flight", ())] == 3
    assert values[("latency_seconds_count", ())] == 8
    assert values[("latency_seconds_bucket", (("le", "0.1"),))] == 8
    assert values[("latency_seconds_bucket", (("le", "+Inf"),))] == 8
    # _created is a time, not a count: the earliest is kept, not the sum
    created = [v for (name, _), v in values.items() if name == "calls_created"]
    assert created and all(v < 4_000_000_000 for v in created)
    # the exemplar of a bucket survives the merge (OpenMetrics output)
    latency = next(m for m in merged if m.name == "latency_seconds")
    exemplars = [s.exemplar for s in latency.samples if s.exemplar is not None]
    assert exemplars and exemplars[0].labels == {"trace_id": "ab" * 16}


def test_nothing_to_merge_is_empty() -> None:
    assert merge([]) == []
