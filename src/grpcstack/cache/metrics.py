"""Cache metrics on the server's registry: per tier hits/misses/errors, latency, L1 size.

Hit rate (the seeds alert below 80%), in PromQL::

    sum(rate(grpcstack_cache_lookups_total{result="hit"}[5m]))
      / sum(rate(grpcstack_cache_lookups_total[5m]))
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LAYER = ("service", "method", "layer")


class CacheMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        r = {"registry": registry}
        self.hits = Counter("grpcstack_cache_hits_total", "Cache hits per tier.", _LAYER, **r)
        self.misses = Counter("grpcstack_cache_misses_total", "Cache misses per tier.", _LAYER, **r)
        self.errors = Counter(
            "grpcstack_cache_errors_total",
            "Cache tier operations that failed or timed out.",
            _LAYER,
            **r,
        )
        self.lookups = Counter(
            "grpcstack_cache_lookups_total",
            "Cached calls by outcome (hit in any tier, or miss).",
            ("service", "method", "result"),
            **r,
        )
        self.loads = Counter(
            "grpcstack_cache_loads_total",
            "Loader runs (misses that reached the source).",
            ("service", "method"),
            **r,
        )
        self.coalesced = Counter(
            "grpcstack_cache_coalesced_total",
            "Misses that waited for a load already running.",
            ("service", "method"),
            **r,
        )
        self.stale_writes = Counter(
            "grpcstack_cache_stale_writes_total",
            "Load results kept out of Redis: an invalidation came after the load's lookup.",
            ("service", "method"),
            **r,
        )
        self.abandoned = Counter(
            "grpcstack_cache_abandoned_loads_total",
            "Loads cancelled because every caller waiting for them had left.",
            ("service", "method"),
            **r,
        )
        self.latency = Histogram(
            "grpcstack_cache_tier_seconds",
            "Latency of one tier operation.",
            ("layer", "op"),
            buckets=(0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5),
            **r,
        )
        self.l1_size = Gauge("grpcstack_cache_l1_entries", "Entries in the L1 memory tier.", **r)
        self.l1_evictions = Gauge(
            "grpcstack_cache_l1_evictions", "LRU evictions from the L1 tier since start.", **r
        )
        self._children: dict[tuple[Any, ...], Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*labels)
        return c
