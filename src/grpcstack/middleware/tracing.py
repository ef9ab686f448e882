"""Tracing (OpenTelemetry): one SERVER span per call, W3C trace context in and out.

Install with ``pip install grpcstack[otel]``. Off by default and absent from the chain when off, so
it costs nothing then (this module, the only one importing ``opentelemetry``, is not even loaded).
``GRPC_TRACING=auto`` turns it on when the standard OTLP variables name an exporter
(``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``,
``OTEL_TRACES_EXPORTER``); ``on`` always; ``off`` never. The other ``OTEL_*`` variables (service
name, sampler, headers ...) are read by the OpenTelemetry SDK itself.

Per call (OpenTelemetry's RPC semantic conventions): span ``pkg.Service/Method`` of kind SERVER,
parent taken from the ``traceparent``/``tracestate`` metadata, attributes ``rpc.system=grpc``,
``rpc.service``, ``rpc.method``, ``rpc.grpc.status_code``, ``network.peer.address`` /
``network.peer.port``; span status ERROR for the codes that are the server's fault (UNKNOWN,
DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS), unset otherwise; a ``message``
event per message on streaming calls. The span is current while the handler runs, so
:func:`trace_metadata` and :func:`client_span` continue the trace on outgoing calls; and the
sampled trace id goes to the metrics middleware as the exemplar of the latency histogram bucket.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from grpclib.const import Status
from grpclib.exceptions import GRPCError
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, StatusCode

from .base import Middleware
from .metrics import EXEMPLAR_KEY

if TYPE_CHECKING:
    from grpclib.events import RecvRequest

    from ..context import CallContext

INSTRUMENTATION_NAME = "grpcstack"
#: codes that mark a SERVER span as failed (OpenTelemetry gRPC conventions); a client span fails
#: on every code but OK
SERVER_ERROR_CODES = frozenset(
    {
        Status.UNKNOWN,
        Status.DEADLINE_EXCEEDED,
        Status.UNIMPLEMENTED,
        Status.INTERNAL,
        Status.UNAVAILABLE,
        Status.DATA_LOSS,
    }
)
_SPAN_KEY = "otel.span"


def configure_from_env(service_name: str) -> None:
    """Install an SDK TracerProvider exporting over OTLP, configured by the OTEL_* variables,
    unless the application installed a provider of its own already."""
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return  # the application configured tracing itself
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": service_name}).merge(
        OTELResourceDetector().detect()  # OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES win
    )
    provider = TracerProvider(resource=resource)
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    if exporter_name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    else:
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError as exc:
            raise RuntimeError(
                "tracing needs the OTLP exporter: pip install 'grpcstack[otel]'"
            ) from exc
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)


class _MessageEvents:
    """Counts a streamed message (for the metrics middleware) and records it on the span."""

    __slots__ = ("counter", "kind", "n", "span")

    def __init__(self, span: trace.Span, kind: str, counter: Any) -> None:
        self.span = span
        self.kind = kind
        self.counter = counter
        self.n = 0

    def inc(self) -> None:
        if self.counter is not None:
            self.counter.inc()
        self.n += 1
        self.span.add_event("message", {"message.type": self.kind, "message.id": self.n})


class TracingMiddleware(Middleware):
    """A SERVER span per call. Put it first (or right after metrics) so it sees rejections too."""

    name = "tracing"
    trusted = True

    def __init__(
        self, *, tracer_provider: trace.TracerProvider | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.tracer = trace.get_tracer(INSTRUMENTATION_NAME, tracer_provider=tracer_provider)

    def on_request(self, event: RecvRequest, call: CallContext) -> None:
        parent = propagate.extract(call.metadata)
        attributes: dict[str, Any] = {
            "rpc.system": "grpc",
            "rpc.service": call.service,
            "rpc.method": call.method_name,
        }
        addr = call.peer.addr() if call.peer is not None else None
        if addr:
            attributes["network.peer.address"] = str(addr[0])
            attributes["network.peer.port"] = int(addr[1])
        span = self.tracer.start_span(
            f"{call.service}/{call.method_name}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes=attributes,
        )
        call.extra[_SPAN_KEY] = span
        # current for the rest of this task: the handler, and what it awaits, see it
        otel_context.attach(trace.set_span_in_context(span, parent))
        span_context = span.get_span_context()
        if span_context.trace_flags.sampled:
            call.extra[EXEMPLAR_KEY] = {
                "trace_id": trace.format_trace_id(span_context.trace_id),
                "span_id": trace.format_span_id(span_context.span_id),
            }
        if call.cardinality.client_streaming:
            call.msg_received = _MessageEvents(span, "RECEIVED", call.msg_received)
        if call.cardinality.server_streaming:
            call.msg_sent = _MessageEvents(span, "SENT", call.msg_sent)

    def on_done(self, call: CallContext) -> None:
        span: trace.Span | None = call.extra.get(_SPAN_KEY)
        if span is None:
            return
        status = call.status if call.status is not None else Status.UNKNOWN
        span.set_attribute("rpc.grpc.status_code", status.value)
        if status in SERVER_ERROR_CODES:
            span.set_status(StatusCode.ERROR, call.status_message or status.name)
        if call.exception is not None:
            span.record_exception(call.exception)
        span.end()


# --- outgoing calls ---------------------------------------------------------------------------


def trace_metadata() -> dict[str, str]:
    """``traceparent`` (and ``tracestate``) for an outgoing call from the current span; empty when
    there is none. Merge it into the call's metadata, or use :func:`client_span`."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


class ClientSpan:
    """The CLIENT span of one outgoing call (from :func:`start_client_span` or
    :func:`client_span`)."""

    __slots__ = ("span",)

    def __init__(self, span: trace.Span) -> None:
        self.span = span

    def set_grpc_status(self, status: Status, message: str | None = None) -> None:
        self.span.set_attribute("rpc.grpc.status_code", status.value)
        if status is not Status.OK:
            self.span.set_status(StatusCode.ERROR, message or status.name)

    def message(self, kind: str, n: int) -> None:
        """Record a streamed message: ``kind`` is "SENT" or "RECEIVED", ``n`` counts from 1."""
        self.span.add_event("message", {"message.type": kind, "message.id": n})

    def set_peer(self, target: str) -> None:
        """``server.address`` / ``server.port`` from a "host:port" target (known once an attempt
        picked one)."""
        host, _, port = target.rpartition(":")
        if host and port.isdigit():
            self.span.set_attribute("server.address", host.strip("[]"))
            self.span.set_attribute("server.port", int(port))

    def attempt(self, n: int, transparent: bool) -> None:
        """Record attempt ``n`` (2, 3 ...: a retry or hedge) of the call."""
        self.span.add_event(
            "attempt", {"grpcstack.attempt": n, "grpcstack.transparent": transparent}
        )

    def finish(self, status: Status, message: str | None = None) -> None:
        """Set the call's final status and end the span (once)."""
        self.set_grpc_status(status, message)
        self.span.end()


def _client_attributes(method: str, peer: tuple[str, int] | None) -> tuple[str, dict[str, Any]]:
    service, _, name = method.strip("/").partition("/")
    attributes: dict[str, Any] = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
    if peer is not None:
        attributes["server.address"], attributes["server.port"] = peer[0], int(peer[1])
    return f"{service}/{name}", attributes


def start_client_span(
    method: str,
    *,
    peer: tuple[str, int] | None = None,
    tracer_provider: trace.TracerProvider | None = None,
    tracer: trace.Tracer | None = None,
    parent: otel_context.Context | None = None,
) -> tuple[ClientSpan, dict[str, str]]:
    """Start a CLIENT span for ``method``, child of ``parent`` (default: the current span, i.e.
    the call being served, if any), and return it with the ``traceparent``/``tracestate`` headers
    to send. For hook-style callers (a client middleware: start in ``on_start``,
    :meth:`ClientSpan.finish` in ``on_done``); the span is not made current. A caller starting
    many spans passes its own ``tracer`` (getting one per call is not free)."""
    name, attributes = _client_attributes(method, peer)
    if tracer is None:
        tracer = trace.get_tracer(INSTRUMENTATION_NAME, tracer_provider=tracer_provider)
    span = tracer.start_span(name, context=parent, kind=SpanKind.CLIENT, attributes=attributes)
    headers: dict[str, str] = {}
    propagate.inject(headers, context=trace.set_span_in_context(span))
    return ClientSpan(span), headers


@contextmanager
def client_span(
    method: str,
    metadata: MutableMapping[str, str],
    *,
    peer: tuple[str, int] | None = None,
    tracer_provider: trace.TracerProvider | None = None,
) -> Iterator[ClientSpan]:
    """A CLIENT span for one call of ``method`` ("/pkg.Service/Method"), child of the current span,
    its context injected into ``metadata``. Status OK unless the block sets another or raises
    (a ``GRPCError`` records its status)::

        metadata = {}
        with client_span("/ocr.v1.OCRService/ExtractText", metadata) as span:
            reply = await stub.extract_text(request, metadata=metadata)
    """
    name, attributes = _client_attributes(method, peer)
    tracer = trace.get_tracer(INSTRUMENTATION_NAME, tracer_provider=tracer_provider)
    with tracer.start_as_current_span(
        name,
        kind=SpanKind.CLIENT,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        propagate.inject(metadata)
        handle = ClientSpan(span)
        try:
            yield handle
        except GRPCError as err:
            handle.set_grpc_status(err.status, err.message)
            raise
        except BaseException as exc:
            span.record_exception(exc)
            handle.set_grpc_status(Status.UNKNOWN, repr(exc))
            raise
        else:
            if "rpc.grpc.status_code" not in (getattr(span, "attributes", None) or {}):
                span.set_attribute("rpc.grpc.status_code", Status.OK.value)
