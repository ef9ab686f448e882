"""Prometheus metrics with go-grpc-middleware's server names and labels.

grpc_server_started_total, grpc_server_handled_total{grpc_code}, grpc_server_msg_received_total,
grpc_server_msg_sent_total, grpc_server_handling_seconds (histogram), all with grpc_type,
grpc_service, grpc_method; codes in Go spelling (OK, InvalidArgument, Canceled ...), so existing
dashboards and alert rules work. Plus grpc_server_in_flight. Every registered method is
pre-initialised, and label children are resolved once per method, not per call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from grpclib.const import Status
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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

DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
_LABELS = ("grpc_type", "grpc_service", "grpc_method")


class _MethodMetrics:
    __slots__ = ("handled", "in_flight", "latency", "received", "sent", "started")

    def __init__(self, m: MetricsMiddleware, labels: tuple[str, str, str]) -> None:
        self.started = m.started.labels(*labels)
        self.received = m.msg_received.labels(*labels)
        self.sent = m.msg_sent.labels(*labels)
        self.latency = m.handling.labels(*labels)
        self.in_flight = m.in_flight.labels(*labels)
        self.handled = {
            code: m.handled.labels(*labels, name) for code, name in GO_CODE_NAMES.items()
        }


class MetricsMiddleware(Middleware):
    name = "metrics"
    trusted = True

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.registry = registry
        r = {"registry": registry}
        self.started = Counter(
            "grpc_server_started_total", "Total number of RPCs started on the server.", _LABELS, **r
        )
        self.handled = Counter(
            "grpc_server_handled_total",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            (*_LABELS, "grpc_code"),
            **r,
        )
        self.msg_received = Counter(
            "grpc_server_msg_received_total",
            "Total number of RPC stream messages received on the server.",
            _LABELS,
            **r,
        )
        self.msg_sent = Counter(
            "grpc_server_msg_sent_total",
            "Total number of gRPC stream messages sent by the server.",
            _LABELS,
            **r,
        )
        self.handling = Histogram(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level "
            "handled by the server.",
            _LABELS,
            buckets=tuple(buckets),
            **r,
        )
        self.in_flight = Gauge(
            "grpc_server_in_flight", "Number of RPCs being handled by the server.", _LABELS, **r
        )
        self._methods: dict[str, _MethodMetrics] = {}

    def initialize(self, mapping: dict[str, Any]) -> None:
        """Pre-create every series of every registered method (as InitializeMetrics does)."""
        for method, handler in mapping.items():
            if handler is None or not self.applies_to(method):
                continue
            _, service, name = method.split("/", 2)
            labels = (GRPC_TYPES[handler.cardinality], service, name)
            self._methods[method] = _MethodMetrics(self, labels)

    def _for(self, call: CallContext) -> _MethodMetrics:
        metrics = self._methods.get(call.method)
        if metrics is None:
            metrics = self._methods[call.method] = _MethodMetrics(
                self, (call.grpc_type, call.service, call.method_name)
            )
        return metrics

    async def on_request(self, event: RecvRequest, call: CallContext) -> None:
        m = self._for(call)
        m.started.inc()
        m.in_flight.inc()
        call.msg_received = m.received
        call.msg_sent = m.sent

    def on_done(self, call: CallContext) -> None:
        m = self._for(call)
        m.in_flight.dec()
        m.latency.observe(call.duration or 0.0)
        assert call.status is not None
        m.handled[call.status].inc()
