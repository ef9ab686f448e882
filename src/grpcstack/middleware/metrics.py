"""Prometheus metrics with go-grpc-middleware's server names and labels.

grpc_server_started_total, grpc_server_handled_total{grpc_code}, grpc_server_msg_received_total,
grpc_server_msg_sent_total, grpc_server_handling_seconds (histogram), all with grpc_type,
grpc_service, grpc_method; codes in Go spelling (OK, InvalidArgument, Canceled ...), so existing
dashboards and alert rules work. Plus grpc_server_in_flight. Every registered method is
pre-initialised with every code. When a call carries exemplar labels (the tracing middleware puts
the trace id in ``call.extra[EXEMPLAR_KEY]``), the latency bucket it lands in keeps the latest one
as its exemplar (OpenMetrics exposition only).

The numbers live in plain per-method slots and are turned into metric families only when the
registry is scraped: a call costs a handful of integer increments instead of eight locked
prometheus_client value updates. All updates happen on the server's event loop thread.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from grpclib.const import Status
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar

from ..context import GRPC_TYPES, CallContext
from .base import Middleware

if TYPE_CHECKING:
    from grpclib.events import RecvRequest

#: grpc-go's codes.Code.String() spelling
GO_CODE_NAMES = {
    Status.OK: "OK",
    Status.CANCELLED: "Canceled",
    Status.UNKNOWN: "Unknown",
    Status.INVALID_ARGUMENT: "InvalidArgument",
    Status.DEADLINE_EXCEEDED: "DeadlineExceeded",
    Status.NOT_FOUND: "NotFound",
    Status.ALREADY_EXISTS: "AlreadyExists",
    Status.PERMISSION_DENIED: "PermissionDenied",
    Status.RESOURCE_EXHAUSTED: "ResourceExhausted",
    Status.FAILED_PRECONDITION: "FailedPrecondition",
    Status.ABORTED: "Aborted",
    Status.OUT_OF_RANGE: "OutOfRange",
    Status.UNIMPLEMENTED: "Unimplemented",
    Status.INTERNAL: "Internal",
    Status.UNAVAILABLE: "Unavailable",
    Status.DATA_LOSS: "DataLoss",
    Status.UNAUTHENTICATED: "Unauthenticated",
}
_CODES = sorted(GO_CODE_NAMES, key=lambda s: s.value)

DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
_LABELS = ["grpc_type", "grpc_service", "grpc_method"]
#: ``call.extra`` key of the exemplar labels ({"trace_id": ..., "span_id": ...}) of a call
EXEMPLAR_KEY = "exemplar"
#: the protocols of grpcstack.web, labelled when the server also serves HTTP
PROTOCOLS = ("grpc", "connect", "grpc-web")


class MessageCounter:
    """What the transport calls per streamed message (the ``inc`` of a prometheus Counter)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self) -> None:
        self.value += 1


class _MethodStats:
    __slots__ = (
        "buckets",
        "exemplars",
        "handled",
        "in_flight",
        "labels",
        "received",
        "sent",
        "started",
        "sum",
    )

    def __init__(self, labels: list[str], n_buckets: int) -> None:
        self.labels = labels
        self.started = 0
        self.in_flight = 0
        self.handled = [0] * 17  # indexed by status code
        self.received = MessageCounter()
        self.sent = MessageCounter()
        self.buckets = [0] * (n_buckets + 1)  # per bucket, +Inf last; made cumulative on scrape
        self.sum = 0.0
        self.exemplars: list[Exemplar | None] | None = None  # per bucket, once a call has one


class _Collector(Collector):
    def __init__(self, middleware: MetricsMiddleware) -> None:
        self.m = middleware

    def collect(self) -> Iterator[Metric]:
        stats = list(self.m.methods.values())
        names = self.m.label_names  # the module's labels, plus "protocol" when HTTP is served
        started = CounterMetricFamily(
            "grpc_server_started", "Total number of RPCs started on the server.", labels=names
        )
        handled = CounterMetricFamily(
            "grpc_server_handled",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            labels=[*names, "grpc_code"],
        )
        received = CounterMetricFamily(
            "grpc_server_msg_received",
            "Total number of RPC stream messages received on the server.",
            labels=names,
        )
        sent = CounterMetricFamily(
            "grpc_server_msg_sent",
            "Total number of gRPC stream messages sent by the server.",
            labels=names,
        )
        in_flight = GaugeMetricFamily(
            "grpc_server_in_flight", "Number of RPCs being handled by the server.", labels=names
        )
        latency = HistogramMetricFamily(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level "
            "handled by the server.",
            labels=names,
        )
        bounds = [*(repr(float(b)) for b in self.m.buckets), "+Inf"]
        for s in stats:
            started.add_metric(s.labels, s.started)
            for code in _CODES:
                handled.add_metric([*s.labels, GO_CODE_NAMES[code]], s.handled[code.value])
            received.add_metric(s.labels, s.received.value)
            sent.add_metric(s.labels, s.sent.value)
            in_flight.add_metric(s.labels, s.in_flight)
            cumulative: list[Any] = []
            total = 0
            exemplars = s.exemplars or [None] * len(bounds)
            for bound, count, exemplar in zip(bounds, s.buckets, exemplars, strict=True):
                total += count
                cumulative.append((bound, total) if exemplar is None else (bound, total, exemplar))
            latency.add_metric(s.labels, cumulative, s.sum)
        yield from (started, handled, received, sent, latency, in_flight)


class MetricsMiddleware(Middleware):
    name = "metrics"
    trusted = True

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
        protocol_label: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.registry = registry
        #: label every series with the call's protocol (grpc, connect, grpc-web)
        self.protocol_label = protocol_label
        self.label_names = [*_LABELS, "protocol"] if protocol_label else list(_LABELS)
        self.buckets = sorted(float(b) for b in buckets if b != float("inf"))
        self.methods: dict[str, _MethodStats] = {}
        registry.register(_Collector(self))

    def initialize(self, mapping: dict[str, Any]) -> None:
        """Pre-create every series of every registered method (as InitializeMetrics does)."""
        for method, handler in mapping.items():
            if handler is not None and self.applies_to(method):
                _, service, name = method.split("/", 2)
                labels = [GRPC_TYPES[handler.cardinality], service, name]
                if not self.protocol_label:
                    self._add(method, labels)
                    continue
                for protocol in PROTOCOLS:
                    self._add(_key(method, protocol), [*labels, protocol])

    def _add(self, method: str, labels: list[str]) -> _MethodStats:
        stats = self.methods[method] = _MethodStats(labels, len(self.buckets))
        return stats

    def on_request(self, event: RecvRequest, call: CallContext) -> None:
        key = call.method if call.protocol == "grpc" else _key(call.method, call.protocol)
        s = self.methods.get(key)
        if s is None:
            labels = [call.grpc_type, call.service, call.method_name]
            if self.protocol_label:
                labels.append(call.protocol)
            s = self._add(key, labels)
        s.started += 1
        s.in_flight += 1
        call.msg_received = s.received
        call.msg_sent = s.sent

    def on_done(self, call: CallContext) -> None:
        key = call.method if call.protocol == "grpc" else _key(call.method, call.protocol)
        s = self.methods[key]
        s.in_flight -= 1
        assert call.status is not None
        s.handled[call.status.value] += 1
        duration = call.duration or 0.0
        s.sum += duration
        i = bisect_left(self.buckets, duration)
        s.buckets[i] += 1
        if call.extra and (labels := call.extra.get(EXEMPLAR_KEY)) is not None:
            if s.exemplars is None:
                s.exemplars = [None] * len(s.buckets)
            s.exemplars[i] = Exemplar(labels, duration, time.time())


def _key(method: str, protocol: str) -> str:
    return method if protocol == "grpc" else f"{method} {protocol}"
