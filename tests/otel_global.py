"""The process-wide OpenTelemetry TracerProvider of the tests (it can be set only once per process),
exporting into one in-memory exporter that every test module shares: clear it before use."""

from __future__ import annotations

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
