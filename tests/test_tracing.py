"""Tracing with the OpenTelemetry SDK's in-memory exporter: a call chain across two services is
one trace; semantic-convention attributes, statuses, stream events, exemplars, settings."""

from __future__ import annotations

import asyncio
import errno
import re
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk", reason="tracing needs grpcstack[otel]")

from calls import call, call_grpclib
from conftest import ROOT, bound_socket, running, settings
from grpclib.client import Channel
from grpclib.const import Status
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode
from ops_process import ServeProcess, sample, scrape
from otel_helpers import GLOBAL_SPANS, Collector, global_provider
from redis_process import free_port

from gen.echo.v1 import EchoRequest, EchoResponse, EchoServiceBase, EchoServiceStub
from grpcstack import AsyncBaseServer, ServerSettings
from grpcstack.middleware import Middleware
from grpcstack.middleware.tracing import (
    TracingMiddleware,
    client_span,
    start_client_span,
    trace_metadata,
)
from grpcstack.observability import trace_exporter_configured
from grpcstack.testing import make_channel
from platform_services.echo import EchoService


class TracedServer(AsyncBaseServer):
    """Any service, with the tracing middleware (on the test's provider) right after metrics."""

    def __init__(self, s: ServerSettings, service: Any, provider: TracerProvider) -> None:
        super().__init__(s)
        self.service = service
        self.provider = provider

    def services(self) -> list[Any]:
        return [self.service]

    def middlewares(self) -> list[Middleware]:
        chain = super().middlewares()
        chain.insert(1, TracingMiddleware(tracer_provider=self.provider))
        return chain


class FrontEcho(EchoServiceBase):
    """Echo that asks a backend, inside a client span (as grpcstack.Client will)."""

    def __init__(self, backend_port: int, provider: TracerProvider) -> None:
        self.backend_port = backend_port
        self.provider = provider

    async def echo(self, message: EchoRequest) -> EchoResponse:
        metadata: dict[str, str] = {}
        method = "/echo.v1.EchoService/Echo"
        peer = ("127.0.0.1", self.backend_port)
        with client_span(method, metadata, peer=peer, tracer_provider=self.provider):
            ch = make_channel(*peer)
            try:
                reply = await EchoServiceStub(ch).echo(message, metadata=metadata)
            finally:
                ch.close()
        return EchoResponse(message=f"front:{reply.message}")


def by_kind(spans: list[ReadableSpan], kind: SpanKind, name_part: str = "") -> list[ReadableSpan]:
    return [s for s in spans if s.kind is kind and name_part in s.name]


async def test_a_call_chain_across_two_services_is_one_trace(
    provider: TracerProvider, spans: InMemorySpanExporter
) -> None:
    backend = TracedServer(settings(SERVICE_NAME="backend"), EchoService(), provider)
    async with running(backend):
        assert backend.port is not None
        backend_port = backend.port
        front = TracedServer(
            settings(SERVICE_NAME="front"), FrontEcho(backend.port, provider), provider
        )
        async with running(front):
            assert front.port is not None
            tracer = provider.get_tracer("test")
            with tracer.start_as_current_span("caller") as root:
                metadata = trace_metadata()
                assert metadata["traceparent"].split("-")[1] == format(
                    root.get_span_context().trace_id, "032x"
                )
                out = await call(
                    "grpclib", front.port, "Echo", EchoRequest(message="hi"), metadata=metadata
                )
    assert out.status is Status.OK
    assert out.responses[0].message == "front:hi"
    finished = spans.get_finished_spans()
    root_span = next(s for s in finished if s.name == "caller")
    servers = by_kind(finished, SpanKind.SERVER, "EchoService/Echo")
    clients = by_kind(finished, SpanKind.CLIENT)
    assert len(servers) == 2 and len(clients) == 1
    trace_id = root_span.context.trace_id
    assert {s.context.trace_id for s in [*servers, *clients]} == {trace_id}
    front_span = next(s for s in servers if s.parent.span_id == root_span.context.span_id)
    client = clients[0]
    back_span = next(s for s in servers if s is not front_span)
    assert client.parent.span_id == front_span.context.span_id
    assert back_span.parent.span_id == client.context.span_id
    assert back_span.parent.is_remote
    for span in (front_span, back_span):
        assert span.name == "echo.v1.EchoService/Echo"
        attrs = dict(span.attributes or {})
        assert attrs["rpc.system"] == "grpc"
        assert attrs["rpc.service"] == "echo.v1.EchoService"
        assert attrs["rpc.method"] == "Echo"
        assert attrs["rpc.grpc.status_code"] == 0
        assert attrs["network.peer.address"] == "127.0.0.1"
        assert isinstance(attrs["network.peer.port"], int)
        assert span.status.status_code is StatusCode.UNSET
    client_attrs = dict(client.attributes or {})
    assert client_attrs["rpc.grpc.status_code"] == 0
    assert client_attrs["server.address"] == "127.0.0.1"
    assert client_attrs["server.port"] == backend_port
    assert client_attrs["rpc.method"] == "Echo"


@pytest.mark.parametrize(
    ("fail_with", "status", "span_status"),
    [
        ("GRPCError:3", Status.INVALID_ARGUMENT, StatusCode.UNSET),  # the caller's fault
        ("GRPCError:5", Status.NOT_FOUND, StatusCode.UNSET),
        ("GRPCError:14", Status.UNAVAILABLE, StatusCode.ERROR),
        ("RuntimeError", Status.INTERNAL, StatusCode.ERROR),
    ],
)
async def test_span_status_follows_the_grpc_code(
    provider: TracerProvider,
    spans: InMemorySpanExporter,
    fail_with: str,
    status: Status,
    span_status: StatusCode,
) -> None:
    server = TracedServer(settings(), EchoService(), provider)
    async with running(server):
        assert server.port is not None
        out = await call("grpclib", server.port, "Echo", EchoRequest(fail_with=fail_with))
    assert out.status is status
    (span,) = by_kind(spans.get_finished_spans(), SpanKind.SERVER)
    assert span.attributes is not None
    assert span.attributes["rpc.grpc.status_code"] == status.value
    assert span.status.status_code is span_status
    if fail_with == "RuntimeError":  # the exception is on the span, not in the client's message
        assert [e.name for e in span.events] == ["exception"]
        assert "failing as asked" in str(span.events[0].attributes)


async def test_a_rejected_call_has_a_span_too(
    provider: TracerProvider, spans: InMemorySpanExporter
) -> None:
    """The span starts before auth and rate limits, so rejections are traced."""
    server = TracedServer(settings(GRPC_ENABLE_AUTH=True), EchoService(), provider)
    async with running(server):
        assert server.port is not None
        out = await call("grpclib", server.port, "Echo", EchoRequest())
    assert out.status is Status.UNAUTHENTICATED
    (span,) = by_kind(spans.get_finished_spans(), SpanKind.SERVER)
    assert span.attributes is not None
    assert span.attributes["rpc.grpc.status_code"] == Status.UNAUTHENTICATED.value


async def test_streams_record_one_event_per_message(
    provider: TracerProvider, spans: InMemorySpanExporter
) -> None:
    server = TracedServer(settings(), EchoService(), provider)
    async with running(server):
        assert server.port is not None
        expand = await call("grpclib", server.port, "Expand", EchoRequest(message="m", count=3))
        chat = await call("grpclib", server.port, "Chat", EchoRequest(message="c"))
        unary = await call("grpclib", server.port, "Echo", EchoRequest(message="u"))
    assert expand.status is chat.status is unary.status is Status.OK
    finished = {s.name: s for s in by_kind(spans.get_finished_spans(), SpanKind.SERVER)}
    events = {
        name.split("/")[1]: [(e.name, dict(e.attributes or {})) for e in span.events]
        for name, span in finished.items()
    }
    assert events["Expand"] == [
        ("message", {"message.type": "SENT", "message.id": i}) for i in (1, 2, 3)
    ]
    chat_events = events["Chat"]
    assert ("message", {"message.type": "RECEIVED", "message.id": 1}) in chat_events
    assert ("message", {"message.type": "SENT", "message.id": 1}) in chat_events
    assert events["Echo"] == []  # unary calls: the span is the message


async def test_latency_buckets_carry_the_trace_id_as_exemplar(
    provider: TracerProvider, spans: InMemorySpanExporter
) -> None:
    # the exporter binds a port number: another process may take the probed one first, so retry
    for _ in range(5):
        metrics_port = free_port()
        server = TracedServer(settings(GRPC_METRICS_PORT=metrics_port), EchoService(), provider)
        try:
            await server.start(sock=bound_socket())
            break
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
    else:
        raise AssertionError("no free port for the metrics exporter in 5 tries")
    try:
        assert server.port is not None
        out = await call("grpclib", server.port, "Echo", EchoRequest(message="x"))
        assert out.status is Status.OK
        # urllib blocks: scrape from a thread while this loop serves
        accept = "application/openmetrics-text; version=1.0.0"
        om = await asyncio.to_thread(scrape, metrics_port, accept)
        text = await asyncio.to_thread(scrape, metrics_port)
    finally:
        await server.stop(1)
    (span,) = by_kind(spans.get_finished_spans(), SpanKind.SERVER)
    trace_id = format(span.context.trace_id, "032x")
    lines = [
        line
        for line in om.splitlines()
        if line.startswith("grpc_server_handling_seconds_bucket{") and 'grpc_method="Echo"' in line
    ]
    with_exemplar = [line for line in lines if " # {" in line]
    assert len(with_exemplar) == 1, lines
    assert f'trace_id="{trace_id}"' in with_exemplar[0]
    assert f'span_id="{format(span.context.span_id, "016x")}"' in with_exemplar[0]
    # the classic text format has no exemplars (and must still parse)
    assert " # {" not in text
    labels = {"grpc_method": "Echo", "grpc_code": "OK"}
    assert sample(text, "grpc_server_handled_total", **labels) == 1


async def test_client_span_records_a_failed_call(
    provider: TracerProvider, spans: InMemorySpanExporter
) -> None:
    server = TracedServer(settings(), EchoService(), provider)
    async with running(server):
        assert server.port is not None
        metadata: dict[str, str] = {}
        ch = Channel("127.0.0.1", server.port)
        try:
            with client_span("/echo.v1.EchoService/Echo", metadata, tracer_provider=provider):
                out = await call_grpclib(
                    ch, "Echo", EchoRequest(fail_with="GRPCError:5"), metadata, 10.0
                )
        finally:
            ch.close()
    assert out.status is Status.NOT_FOUND
    (client,) = by_kind(spans.get_finished_spans(), SpanKind.CLIENT)
    (server_span,) = by_kind(spans.get_finished_spans(), SpanKind.SERVER)
    assert server_span.parent.span_id == client.context.span_id
    # call_grpclib catches the GRPCError: the span says OK unless told; set_grpc_status tells it
    with pytest.raises(Exception, match="boom"):
        with client_span("/echo.v1.EchoService/Echo", {}, tracer_provider=provider):
            raise RuntimeError("boom")
    failed = [s for s in by_kind(spans.get_finished_spans(), SpanKind.CLIENT) if s is not client]
    assert failed[0].status.status_code is StatusCode.ERROR
    assert failed[0].attributes["rpc.grpc.status_code"] == Status.UNKNOWN.value


def test_trace_metadata_is_empty_without_a_span() -> None:
    assert trace_metadata() == {}
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    assert carrier == {}
    assert trace.get_current_span().get_span_context().is_valid is False


def test_tracing_is_off_unless_an_exporter_is_configured() -> None:
    assert not trace_exporter_configured({})
    assert trace_exporter_configured({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"})
    assert trace_exporter_configured({"OTEL_TRACES_EXPORTER": "otlp"})
    assert not trace_exporter_configured({"OTEL_TRACES_EXPORTER": "none"})
    assert not trace_exporter_configured(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "OTEL_SDK_DISABLED": "true"}
    )
    default = AsyncBaseServer(settings()).middlewares()
    assert "tracing" not in [m.name for m in default]
    on = AsyncBaseServer(settings(GRPC_TRACING="on")).middlewares()
    names = [m.name for m in on]
    assert names.index("tracing") == names.index("metrics") + 1
    off = AsyncBaseServer(settings(GRPC_TRACING="off")).middlewares()
    assert "tracing" not in [m.name for m in off]


def readme_tracing_example() -> dict[str, Any]:
    text = (ROOT / "README.md").read_text().split("## Tracing", 1)[1].split("\n## ", 1)[0]
    code = next(block for block in re.findall(r"```python\n(.*?)```", text, re.S))
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    return namespace


async def test_the_readme_tracing_example_links_two_services(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GRPC_CLIENT_TRACING", "on")  # what an OTEL_* exporter variable does
    provider = global_provider()
    GLOBAL_SPANS.clear()
    front_echo = readme_tracing_example()["FrontEcho"]
    backend = TracedServer(settings(), EchoService(), provider)
    async with running(backend):
        assert backend.port is not None
        service = front_echo(f"127.0.0.1:{backend.port}")
        front = TracedServer(settings(), service, provider)
        try:
            async with running(front):
                assert front.port is not None
                out = await call("grpclib", front.port, "Echo", EchoRequest(message="r"))
        finally:
            await service.backend.aclose()
    assert out.status is Status.OK and out.responses[0].message == "front:r"
    finished = GLOBAL_SPANS.get_finished_spans()
    (client,) = by_kind(finished, SpanKind.CLIENT)
    servers = by_kind(finished, SpanKind.SERVER)
    assert len(servers) == 2
    assert len({s.context.trace_id for s in finished}) == 1
    outer = next(s for s in servers if s.parent is None)
    inner = next(s for s in servers if s is not outer)
    assert client.parent.span_id == outer.context.span_id
    assert inner.parent.span_id == client.context.span_id


async def test_otel_environment_variables_export_over_otlp(tmp_path: Path) -> None:
    """`grpcstack serve` with only OTEL_* set (GRPC_TRACING=auto) exports its spans over OTLP."""
    collector = Collector()
    await collector.server.start()
    proc = ServeProcess(
        tmp_path / "serve.log",
        "platform_services.echo:EchoServer",
        "--port",
        "0",
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.port}",
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_SERVICE_NAME": "otlp-test",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        },
    )
    try:
        port = int((await proc.wait_for(r"on port (\d+)")).group(1))
        parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        out = await call(
            "grpclib", port, "Echo", EchoRequest(message="o"), metadata={"traceparent": parent}
        )
        assert out.status is Status.OK
        async with asyncio.timeout(30):
            while not collector.spans():
                await asyncio.sleep(0.05)
        proc.signal()
        assert await proc.wait_exit() == 0
    finally:
        proc.close()
        await collector.server.stop(None)
    ((service, span),) = [(n, s) for n, s in collector.spans() if s.name.endswith("/Echo")]
    assert service == "otlp-test"
    assert span.trace_id.hex() == "0af7651916cd43dd8448eb211c80319c"
    assert span.parent_span_id.hex() == "b7ad6b7169203331"
    attrs = {a.key: a.value for a in span.attributes}
    assert attrs["rpc.system"].string_value == "grpc"
    assert attrs["rpc.grpc.status_code"].int_value == 0


async def test_start_client_span_for_hook_style_clients(
    provider: TracerProvider, spans: InMemorySpanExporter
) -> None:
    """What a client middleware does: start in on_start (headers appended), finish in on_done."""
    server = TracedServer(settings(), EchoService(), provider)
    async with running(server):
        assert server.port is not None
        tracer = provider.get_tracer("test")
        with tracer.start_as_current_span("handler"):
            span, headers = start_client_span(
                "/echo.v1.EchoService/Echo",
                peer=("127.0.0.1", server.port),
                tracer_provider=provider,
            )
        assert trace.get_current_span() is not span.span  # not made current
        out = await call(
            "grpclib", server.port, "Echo", EchoRequest(fail_with="GRPCError:14"), metadata=headers
        )
        span.finish(out.status, out.message)
    assert out.status is Status.UNAVAILABLE
    finished = spans.get_finished_spans()
    (client,) = by_kind(finished, SpanKind.CLIENT)
    (server_span,) = by_kind(finished, SpanKind.SERVER)
    handler = next(s for s in finished if s.name == "handler")
    assert client.parent.span_id == handler.context.span_id
    assert server_span.parent.span_id == client.context.span_id
    assert client.status.status_code is StatusCode.ERROR
    assert client.attributes["rpc.grpc.status_code"] == Status.UNAVAILABLE.value
