"""OpenTelemetry for the tests: the process-wide TracerProvider (it can be set only once per
process), exporting into one in-memory exporter every test module shares (clear it before use),
and a real OTLP/gRPC receiver."""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

GLOBAL_SPANS = InMemorySpanExporter()


def global_provider() -> TracerProvider:
    """The global provider (what code without a ``tracer_provider`` uses), set on first use."""
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(GLOBAL_SPANS))
    trace.set_tracer_provider(provider)
    assert trace.get_tracer_provider() is provider
    return provider


class Collector:
    """A real OTLP/gRPC trace receiver on 127.0.0.1 (grpcio), keeping what it is sent."""

    def __init__(self) -> None:
        import grpc
        from opentelemetry.proto.collector.trace.v1 import (
            trace_service_pb2,
            trace_service_pb2_grpc,
        )

        received: list[Any] = []
        self.requests = received

        class Servicer(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:  # the generated name
                received.append(request)
                return trace_service_pb2.ExportTraceServiceResponse()

        self.server = grpc.aio.server()
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Servicer(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def spans(self) -> list[tuple[str, Any]]:
        """(service.name, span) for every span received."""
        out = []
        for request in self.requests:
            for resource_spans in request.resource_spans:
                attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    out.extend((attrs.get("service.name", ""), s) for s in scope.spans)
        return out
