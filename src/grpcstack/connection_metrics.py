"""What the transport refused, as Prometheus metrics: an operator sees abuse and drains."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class ConnectionMetrics:
    """The transport's observer (``grpcstack.transport.TransportObserver``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.active = Gauge("grpc_active_connections", "Open HTTP/2 connections", registry=registry)
        self.refused = Counter(
            "grpcstack_refused_streams_total",
            "Streams refused or answered by the transport without a call, by reason",
            ["reason"],
            registry=registry,
        )
        self.resets = Counter(
            "grpcstack_client_resets_total",
            "RST_STREAM frames from clients, by whether the call had been dispatched",
            ["phase"],
            registry=registry,
        )
        self.goaways = Counter(
            "grpcstack_goaways_sent_total",
            "GOAWAY frames sent, by reason",
            ["reason"],
            registry=registry,
        )
        self._before = self.resets.labels("before_dispatch")
        self._in_flight = self.resets.labels("in_flight")

    def connection_opened(self) -> None:
        self.active.inc()

    def connection_closed(self) -> None:
        self.active.dec()

    def stream_refused(self, reason: str) -> None:
        self.refused.labels(reason).inc()

    def stream_reset(self, before_dispatch: bool) -> None:
        (self._before if before_dispatch else self._in_flight).inc()

    def goaway_sent(self, reason: str) -> None:
        self.goaways.labels(reason).inc()
