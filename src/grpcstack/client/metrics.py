"""Client metrics with go-grpc-middleware's client names and labels.

grpc_client_started_total, grpc_client_handled_total{grpc_code}, grpc_client_handling_seconds,
grpc_client_msg_sent_total, grpc_client_msg_received_total (labels grpc_type, grpc_service,
grpc_method; codes in Go spelling), plus grpcstack_client_retries_total{transparent} counting
every attempt after the first. With client spans on, the latency bucket of a call keeps its trace
id as exemplar (OpenMetrics exposition).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from grpclib.const import Status
from prometheus_client import CollectorRegistry, Counter, Histogram

from ..middleware.metrics import DEFAULT_BUCKETS, EXEMPLAR_KEY, GO_CODE_NAMES
from .middleware import ClientCallInfo, ClientMiddleware

_LABELS = ("grpc_type", "grpc_service", "grpc_method")


class ClientMetrics(ClientMiddleware):
    name = "client-metrics"

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.started = Counter(
            "grpc_client_started_total", "RPCs started on the client.", _LABELS, registry=registry
        )
        self.handled = Counter(
            "grpc_client_handled_total",
            "RPCs completed by the client, regardless of success or failure.",
            (*_LABELS, "grpc_code"),
            registry=registry,
        )
        self.seconds = Histogram(
            "grpc_client_handling_seconds",
            "Histogram of response latency (seconds) of the gRPC until it is finished.",
            _LABELS,
            buckets=list(buckets),
            registry=registry,
        )
        self.msg_sent = Counter(
            "grpc_client_msg_sent_total",
            "Stream messages sent by the client.",
            _LABELS,
            registry=registry,
        )
        self.msg_received = Counter(
            "grpc_client_msg_received_total",
            "Stream messages received by the client.",
            _LABELS,
            registry=registry,
        )
        self.retries = Counter(
            "grpcstack_client_retries_total",
            "Attempts after the first (retries and hedges; transparent: never seen by a server).",
            (*_LABELS, "transparent"),
            registry=registry,
        )
        self._children: dict[str, tuple[Any, ...]] = {}

    def _for(self, call: ClientCallInfo) -> tuple[Any, ...]:
        children = self._children.get(call.method)
        if children is None:
            labels = (call.grpc_type, call.service, call.method_name)
            children = self._children[call.method] = (
                self.started.labels(*labels),
                self.seconds.labels(*labels),
                self.msg_sent.labels(*labels),
                self.msg_received.labels(*labels),
                labels,
            )
        return children

    def on_start(self, call: ClientCallInfo) -> None:
        self._for(call)[0].inc()

    def on_attempt(self, call: ClientCallInfo, attempt: int, transparent: bool) -> None:
        labels = self._for(call)[4]
        self.retries.labels(*labels, "true" if transparent else "false").inc()

    def on_done(self, call: ClientCallInfo) -> None:
        children = self._for(call)
        status = call.status if call.status is not None else Status.UNKNOWN
        self.handled.labels(*children[4], GO_CODE_NAMES[status]).inc()
        # the trace id of a sampled client span (client/tracing.py) as the bucket's exemplar
        exemplar = call.extra.get(EXEMPLAR_KEY) if call.extra else None
        children[1].observe(call.duration or 0.0, exemplar)
        if call.msg_sent:
            children[2].inc(call.msg_sent)
        if call.msg_received:
            children[3].inc(call.msg_received)
