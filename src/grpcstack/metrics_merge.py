"""One ``/metrics`` for the workers of ``grpcstack serve --workers N``: an aggregating exporter.

prometheus-client's multiprocess mode was not used: it needs a shared directory of mmap files,
supports only its own metric classes (the stack's server metrics are a custom collector that
renders plain per-method slots at scrape time), and has no exemplars. Instead each worker serves
its own registry on a private loopback port, and on every scrape the supervisor fetches them all
(OpenMetrics, so exemplars survive), adds up the samples with the same name and labels, and
serves the sum in the format the scraper asked for.

* counters, histograms, summaries and gauges are summed (in-flight calls, L1 entries ... add up
  across processes); ``*_created`` takes the earliest; an exemplar is kept from any worker;
* a worker that restarted starts its counters from zero, so the sum drops once: Prometheus's
  ``rate()`` treats that as a counter reset (the restarted worker's earlier counts are lost);
* the supervisor adds ``grpcstack_workers`` (alive) and ``grpcstack_worker_restarts_total``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from .observability import MetricsExporter


class WorkerPool(Protocol):
    """What the exporter reads of the workers' supervisor (``workers.Supervisor``)."""

    @property
    def alive(self) -> int: ...
    @property
    def restarts(self) -> int: ...
    def worker_metrics_ports(self) -> list[int]: ...


log = logging.getLogger("grpcstack.metrics")

OPENMETRICS_ACCEPT = "application/openmetrics-text; version=1.0.0"
SCRAPE_TIMEOUT_SECONDS = 5.0


async def fetch(port: int) -> str:
    """GET /metrics from a worker's private exporter on 127.0.0.1 (OpenMetrics)."""
    async with asyncio.timeout(SCRAPE_TIMEOUT_SECONDS):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(
                f"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: {OPENMETRICS_ACCEPT}\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(f"worker metrics on port {port}: {head[:40]!r}")
    return body.decode()


def merge(texts: Iterable[str]) -> list[Metric]:
    """Sum OpenMetrics expositions sample by sample (same name and labels)."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], list[Any]]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
                values[family.name] = {}
            slots = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                slot = slots.get(key)
                if slot is None:
                    slots[key] = [sample.value, sample.exemplar]
                    continue
                if sample.name.endswith("_created"):
                    slot[0] = min(slot[0], sample.value)
                else:
                    slot[0] += sample.value
                if sample.exemplar is not None:
                    slot[1] = sample.exemplar
    for name, merged in families.items():
        for (sample_name, labels), (value, exemplar) in values[name].items():
            merged.add_sample(sample_name, dict(labels), value, exemplar=exemplar)
    return list(families.values())


class _Static(Collector):
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return iter(self.metrics)


class MergingExporter(MetricsExporter):
    """``/metrics`` of the supervisor: the sum of every live worker's registry."""

    def __init__(self, supervisor: WorkerPool, host: str, port: int) -> None:
        super().__init__(CollectorRegistry(), host, port)
        self.supervisor = supervisor

    async def render(self, accept: str) -> tuple[bytes, str]:
        ports = self.supervisor.worker_metrics_ports()
        results = await asyncio.gather(*(fetch(p) for p in ports), return_exceptions=True)
        texts = []
        for port, result in zip(ports, results, strict=True):
            if isinstance(result, BaseException):
                # a worker restarting between two scrapes: serve the others
                log.warning("worker metrics on port %d failed: %r", port, result)
            else:
                texts.append(result)
        metrics = merge(texts)
        workers = GaugeMetricFamily("grpcstack_workers", "Worker processes alive.")
        workers.add_metric([], self.supervisor.alive)
        restarts = CounterMetricFamily(
            "grpcstack_worker_restarts", "Worker processes restarted by the supervisor."
        )
        restarts.add_metric([], self.supervisor.restarts)
        scraped = GaugeMetricFamily(
            "grpcstack_workers_scraped", "Workers whose metrics are in this scrape."
        )
        scraped.add_metric([], len(texts))
        registry = CollectorRegistry()
        registry.register(_Static([*metrics, workers, restarts, scraped]))
        encoder, ctype = choose_encoder(accept)
        return encoder(registry), ctype
