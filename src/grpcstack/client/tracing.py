"""Client spans: a CLIENT span per outgoing call, its W3C trace context sent on every attempt.

Added by :class:`~grpcstack.Client` when tracing is on (``GRPC_CLIENT_TRACING``: ``auto`` = when an
``OTEL_*`` exporter variable is set, as the server's ``GRPC_TRACING``); absent otherwise, so a call
then pays nothing (this module, like every one importing ``opentelemetry``, is not even loaded).

The span is a child of the current span: inside a handler that is the SERVER span of the call being
served, so a chain of services is one trace. Attributes follow OpenTelemetry's RPC conventions
(``rpc.system``, ``rpc.service``, ``rpc.method``, ``rpc.grpc.status_code``, ``server.address`` /
``server.port`` of the last attempt's target); status ERROR for every code but OK. A sampled span's
trace id is the exemplar of the call's ``grpc_client_handling_seconds`` bucket.

One span per CALL, not per attempt: retries and hedges are ``attempt`` events on it
(``grpcstack.attempt`` = 2, 3 ..., ``grpcstack.transparent``); ``grpcstack.attempts`` counts all.
Every attempt sends the same ``traceparent``, so each server span an attempt produced is a child of
the call's span: the retries show as siblings under it. Why not a span per attempt (what gRPC's own
OpenTelemetry design, gRFC A72, adds under its call span): hedged attempts overlap and the client
middleware hooks see an attempt begin, not end, so per-attempt spans would need hooks inside the
attempt loop (the client's hot path), for a trace that shows the same calls.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from grpclib.const import Status
from opentelemetry import propagate, trace

from ..middleware.metrics import EXEMPLAR_KEY
from ..middleware.tracing import (
    INSTRUMENTATION_NAME,
    ClientSpan,
    configure_from_env,
    start_client_span,
)
from ..observability import trace_exporter_configured
from .middleware import ClientCallInfo, ClientMiddleware

_SPAN_KEY = "otel.client_span"
_TRACE_HEADERS = frozenset({"traceparent", "tracestate"})


def _default_service_name() -> str:
    # OpenTelemetry's own default for an unnamed service (OTEL_SERVICE_NAME wins over it)
    return f"unknown_service:{os.path.basename(sys.argv[0] or 'python')}"


class ClientTracing(ClientMiddleware):
    """A CLIENT span per call. ``tracer_provider`` defaults to the global one (what the server,
    or the application, configured)."""

    name = "client-tracing"

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        configure: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # a ProxyTracer while no provider is set: it follows the provider installed later
        self.tracer = trace.get_tracer(INSTRUMENTATION_NAME, tracer_provider=tracer_provider)
        #: install the OTLP exporter from OTEL_* at the first call, unless a provider is set by
        #: then (a server configures its own at start: lazily, so the client does not name it)
        self._configure = configure and tracer_provider is None

    def on_start(self, call: ClientCallInfo) -> None:
        if self._configure:
            self._configure = False
            if trace_exporter_configured():
                configure_from_env(_default_service_name())
        metadata = call.metadata
        parent = None
        if any(key in _TRACE_HEADERS for key, _ in metadata):
            # the caller sent a trace context itself: the span is its child, sent once
            carrier = {key: value for key, value in metadata if key in _TRACE_HEADERS}
            parent = propagate.extract(carrier)
            metadata[:] = [(k, v) for k, v in metadata if k not in _TRACE_HEADERS]
        span, headers = start_client_span(call.method, tracer=self.tracer, parent=parent)
        metadata.extend(headers.items())
        call.extra[_SPAN_KEY] = span
        span_context = span.span.get_span_context()
        if span_context.trace_flags.sampled:  # for ClientMetrics' latency histogram
            call.extra[EXEMPLAR_KEY] = {
                "trace_id": trace.format_trace_id(span_context.trace_id),
                "span_id": trace.format_span_id(span_context.span_id),
            }

    def on_attempt(self, call: ClientCallInfo, attempt: int, transparent: bool) -> None:
        span: ClientSpan | None = call.extra.get(_SPAN_KEY)
        if span is not None:
            span.attempt(attempt, transparent)

    def on_message_sent(self, call: ClientCallInfo) -> None:
        if call.cardinality.client_streaming:  # unary calls: the span is the message
            span: ClientSpan | None = call.extra.get(_SPAN_KEY)
            if span is not None:
                span.message("SENT", call.msg_sent)

    def on_message_received(self, call: ClientCallInfo) -> None:
        if call.cardinality.server_streaming:
            span: ClientSpan | None = call.extra.get(_SPAN_KEY)
            if span is not None:
                span.message("RECEIVED", call.msg_received)

    def on_done(self, call: ClientCallInfo) -> None:
        # absent when an earlier middleware's on_start failed the call before ours ran
        span: ClientSpan | None = call.extra.pop(_SPAN_KEY, None)
        if span is None:
            return
        if call.peer is not None:
            span.set_peer(call.peer)
        span.span.set_attribute("grpcstack.attempts", call.attempts)
        span.finish(call.status if call.status is not None else Status.UNKNOWN, call.status_message)
