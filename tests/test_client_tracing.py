"""Client spans of grpcstack.Client, with the SDK's in-memory exporter and real servers: a chain
through two services is one trace, retries and hedges are one span with attempt events, streams
record messages, and tracing off adds nothing to a call."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk", reason="tracing needs grpcstack[otel]")

from client_helpers import client_settings
from conftest import running, settings
from grpclib.const import Cardinality, Status
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from otel_helpers import GLOBAL_SPANS, Collector, global_provider
from prometheus_client import CollectorRegistry

from gen.echo.v1 import EchoRequest, EchoResponse, EchoServiceBase, EchoServiceStub
from grpcstack import ServerSettings
from grpcstack.client import Client, HedgingPolicy, MethodConfig, RetryPolicy, RpcError
from grpcstack.client.tracing import ClientTracing
from grpcstack.middleware import Middleware
from grpcstack.middleware.tracing import TracingMiddleware
from platform_services.echo import EchoServer

ECHO = "/echo.v1.EchoService/Echo"


class TracedEcho(EchoServer):
    """EchoServer (or any service) with the server tracing middleware on ``provider``, right after
    metrics; records the traceparent headers each call arrived with."""

    def __init__(
        self, s: ServerSettings, provider: TracerProvider | None, service: Any = None
    ) -> None:
        super().__init__(s)
        self.provider = provider
        if service is not None:
            self.echo = service
        self.traceparents: list[list[str]] = []

    def middlewares(self) -> list[Middleware]:
        chain = super().middlewares()
        seen = self.traceparents

        class Record(Middleware):
            def on_request(self, event: Any, call: Any) -> None:
                seen.append(list(event.metadata.getall("traceparent", [])))

        if self.provider is not None:  # else GRPC_TRACING put the global one's in the chain
            chain.insert(1, TracingMiddleware(tracer_provider=self.provider))
        return [*chain, Record()]


class Front(EchoServiceBase):
    """Service A: answers Echo by calling service B through grpcstack.Client."""

    def __init__(self, client: Client) -> None:
        self.client = client

    async def echo(self, message: EchoRequest) -> EchoResponse:
        reply = await self.client.stub(EchoServiceStub).echo(message, timeout=10)
        return EchoResponse(message=f"front:{reply.message}")


def tracing(provider: TracerProvider | None) -> list[ClientTracing]:
    return [] if provider is None else [ClientTracing(tracer_provider=provider)]


@asynccontextmanager
async def two_services(
    provider: TracerProvider | None, **server: Any
) -> AsyncIterator[tuple[TracedEcho, TracedEcho, Client]]:
    """B (echo), A (calls B with its own Client), both traced; yields (A, B, a client of A)."""
    s = {"GRPC_ENABLE_RATE_LIMITING": False, **server}
    cs = {k: v for k, v in server.items() if k.startswith("GRPC_CLIENT_")}
    s = {k: v for k, v in s.items() if not k.startswith("GRPC_CLIENT_")}
    async with running(TracedEcho(settings(**s), provider)) as b:
        b_client = Client(
            f"127.0.0.1:{b.port}", settings=client_settings(**cs), middlewares=tracing(provider)
        )
        async with b_client, running(TracedEcho(settings(**s), provider, Front(b_client))) as a:
            async with Client(
                f"127.0.0.1:{a.port}", settings=client_settings(**cs), middlewares=tracing(provider)
            ) as client:
                yield a, b, client


def of_kind(spans: tuple[ReadableSpan, ...], kind: SpanKind) -> list[ReadableSpan]:
    return sorted((s for s in spans if s.kind is kind), key=lambda s: s.start_time or 0)


def check_chain(finished: tuple[ReadableSpan, ...], b_port: int, a_port: int) -> None:
    """client -> A server -> A's client -> B server: one trace, each the parent of the next."""
    clients = of_kind(finished, SpanKind.CLIENT)
    servers = of_kind(finished, SpanKind.SERVER)
    assert len(clients) == 2 and len(servers) == 2, finished
    outer, inner = clients  # the outer client span starts first
    a_server, b_server = servers
    assert outer.parent is None  # the root: nothing was current in the test
    assert len({s.context.trace_id for s in finished}) == 1
    assert a_server.parent is not None and a_server.parent.span_id == outer.context.span_id
    assert a_server.parent.is_remote
    assert inner.parent is not None and inner.parent.span_id == a_server.context.span_id
    assert not inner.parent.is_remote  # in-process: A's handler span
    assert b_server.parent is not None and b_server.parent.span_id == inner.context.span_id
    for span, port in ((outer, a_port), (inner, b_port)):
        assert span.name == "echo.v1.EchoService/Echo"
        attrs = dict(span.attributes or {})
        assert attrs["rpc.system"] == "grpc"
        assert attrs["rpc.service"] == "echo.v1.EchoService"
        assert attrs["rpc.method"] == "Echo"
        assert attrs["rpc.grpc.status_code"] == Status.OK.value
        assert attrs["server.address"] == "127.0.0.1" and attrs["server.port"] == port
        assert attrs["grpcstack.attempts"] == 1
        assert span.status.status_code is StatusCode.UNSET
    # each CLIENT span encloses the SERVER span it caused
    for client, server in ((outer, a_server), (inner, b_server)):
        assert client.start_time is not None and client.end_time is not None
        assert server.start_time is not None and server.end_time is not None
        assert client.start_time <= server.start_time and server.end_time <= client.end_time


async def test_a_call_through_two_services_is_one_trace(
    provider: TracerProvider, spans: InMemorySpanExporter
) -> None:
    async with two_services(provider) as (a, b, client):
        reply = await client.stub(EchoServiceStub).echo(EchoRequest(message="hi"), timeout=10)
        assert reply.message == "front:hi"
        # one traceparent per call arrived at each server (none duplicated)
        assert [len(t) for t in a.traceparents] == [1] and [len(t) for t in b.traceparents] == [1]
        assert b.port is not None and a.port is not None
        b_port, a_port = b.port, a.port
    check_chain(spans.get_finished_spans(), b_port, a_port)


async def test_the_settings_alone_trace_a_chain_with_the_global_provider(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """GRPC_TRACING=on on the servers, GRPC_CLIENT_TRACING=on on the clients, the global provider
    (what configure_from_env installs from OTEL_*): the same one trace, no tracing code in the
    application."""
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    global_provider()
    GLOBAL_SPANS.clear()
    async with two_services(None, GRPC_TRACING="on", GRPC_CLIENT_TRACING="on") as (a, b, client):
        assert [m.name for m in client.middlewares] == ["client-tracing"]
        reply = await client.stub(EchoServiceStub).echo(EchoRequest(message="env"), timeout=10)
        assert reply.message == "front:env"
        assert b.port is not None and a.port is not None
        b_port, a_port = b.port, a.port
    check_chain(GLOBAL_SPANS.get_finished_spans(), b_port, a_port)
    GLOBAL_SPANS.clear()


async def test_retries_are_one_client_span_with_attempt_events(
    provider: TracerProvider, spans: InMemorySpanExporter
) -> None:
    methods = {
        ECHO: MethodConfig(timeout=10, retry=RetryPolicy(max_attempts=3, initial_backoff=0.01))
    }
    async with running(TracedEcho(settings(GRPC_ENABLE_RATE_LIMITING=False), provider)) as server:
        async with Client(
            f"127.0.0.1:{server.port}",
            settings=client_settings(),
            methods=methods,
            middlewares=tracing(provider),
        ) as client:
            with pytest.raises(RpcError) as failed:
                await client.stub(EchoServiceStub).echo(EchoRequest(fail_with="GRPCError:14"))
    assert failed.value.status is Status.UNAVAILABLE
    finished = spans.get_finished_spans()
    (client_span,) = of_kind(finished, SpanKind.CLIENT)
    servers = of_kind(finished, SpanKind.SERVER)
    assert len(servers) == 3  # every attempt reached the server: siblings under the call's span
    assert {s.parent.span_id for s in servers if s.parent} == {client_span.context.span_id}
    assert client_span.status.status_code is StatusCode.ERROR
    attrs = dict(client_span.attributes or {})
    assert attrs["rpc.grpc.status_code"] == Status.UNAVAILABLE.value
    assert attrs["grpcstack.attempts"] == 3
    events = [(e.name, dict(e.attributes or {})) for e in client_span.events]
    assert events == [
        ("attempt", {"grpcstack.attempt": n, "grpcstack.transparent": False}) for n in (2, 3)
    ]


class SlowFirst(EchoServiceBase):
    """The first call hangs until cancelled; the others answer at once."""

    def __init__(self) -> None:
        self.calls = 0
        self.first_cancelled = asyncio.Event()

    async def echo(self, message: EchoRequest) -> EchoResponse:
        self.calls += 1
        if self.calls == 1:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.first_cancelled.set()
                raise
        return EchoResponse(message=message.message)


async def test_a_hedged_call_is_one_span_over_both_copies(
    provider: TracerProvider, spans: InMemorySpanExporter
) -> None:
    slow = SlowFirst()
    methods = {ECHO: MethodConfig(timeout=30, hedging=HedgingPolicy(3, hedging_delay=0.05))}
    s = settings(GRPC_ENABLE_RATE_LIMITING=False)
    async with running(TracedEcho(s, provider, slow)) as server:
        async with Client(
            f"127.0.0.1:{server.port}",
            settings=client_settings(),
            methods=methods,
            middlewares=tracing(provider),
        ) as client:
            reply = await client.stub(EchoServiceStub).echo(EchoRequest(message="h"))
            assert reply.message == "h"
            await asyncio.wait_for(slow.first_cancelled.wait(), 10)
        # both copies carried the same context
        assert len(server.traceparents) == 2
        assert server.traceparents[0] == server.traceparents[1]
        async with asyncio.timeout(10):  # the cancelled copy's server span ends as it unwinds
            while len(of_kind(spans.get_finished_spans(), SpanKind.SERVER)) < 2:
                await asyncio.sleep(0.01)
    finished = spans.get_finished_spans()
    (client_span,) = of_kind(finished, SpanKind.CLIENT)
    servers = of_kind(finished, SpanKind.SERVER)
    assert {s.parent.span_id for s in servers if s.parent} == {client_span.context.span_id}
    codes = sorted(dict(s.attributes or {})["rpc.grpc.status_code"] for s in servers)
    assert codes == [Status.OK.value, Status.CANCELLED.value]
    assert dict(client_span.attributes or {})["grpcstack.attempts"] == 2
    assert [e.name for e in client_span.events] == ["attempt"]
    assert client_span.status.status_code is StatusCode.UNSET


async def test_streams_failures_and_a_caller_supplied_context(
    provider: TracerProvider, spans: InMemorySpanExporter
) -> None:
    async with running(TracedEcho(settings(GRPC_ENABLE_RATE_LIMITING=False), provider)) as server:
        async with Client(
            f"127.0.0.1:{server.port}",
            settings=client_settings(GRPC_CLIENT_RETRY_MAX_ATTEMPTS=1),
            middlewares=tracing(provider),
        ) as client:
            stub = client.stub(EchoServiceStub)
            got = [r.index async for r in stub.expand(EchoRequest(message="s", count=3))]
            assert got == [0, 1, 2]
            with pytest.raises(RpcError):
                await stub.echo(EchoRequest(fail_with="GRPCError:5"), timeout=10)
            # a context the caller sends itself becomes the client span's parent, sent once
            parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            await stub.echo(EchoRequest(message="p"), metadata={"traceparent": parent})
        assert [len(t) for t in server.traceparents] == [1, 1, 1]
        sent_parent = server.traceparents[2][0]
    expand, failed, continued = of_kind(spans.get_finished_spans(), SpanKind.CLIENT)
    assert [(e.name, dict(e.attributes or {})) for e in expand.events] == [
        ("message", {"message.type": "RECEIVED", "message.id": i}) for i in (1, 2, 3)
    ]
    assert expand.name == "echo.v1.EchoService/Expand"
    # NOT_FOUND is the caller's fault for a server span, a failed call for a client span
    assert failed.status.status_code is StatusCode.ERROR
    assert dict(failed.attributes or {})["rpc.grpc.status_code"] == Status.NOT_FOUND.value
    assert failed.events == ()  # unary: no message events
    assert format(continued.context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    assert continued.parent is not None and format(continued.parent.span_id, "016x") == (
        "b7ad6b7169203331"
    )
    assert sent_parent.split("-")[2] == format(continued.context.span_id, "016x")


async def test_tracing_off_adds_no_hook_and_on_adds_one(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_TRACES_EXPORTER",
        "OTEL_SDK_DISABLED",
    ):
        monkeypatch.delenv(name, raising=False)

    def hooks(client: Client) -> tuple[Any, ...]:
        spec = client._spec(ECHO, Cardinality.UNARY_UNARY, EchoRequest, EchoResponse)
        return (*spec.hooks.on_start, *spec.hooks.on_attempt, *spec.hooks.on_done)

    default = Client("127.0.0.1:1", settings=client_settings())
    assert default.middlewares == [] and hooks(default) == ()  # auto, no OTEL_* exporter
    off = Client("127.0.0.1:1", settings=client_settings(GRPC_CLIENT_TRACING="off"))
    assert off.middlewares == []
    on = Client("127.0.0.1:1", settings=client_settings(GRPC_CLIENT_TRACING="on"))
    assert [m.name for m in on.middlewares] == ["client-tracing"] and len(hooks(on)) == 3
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    auto = Client("127.0.0.1:1", settings=client_settings())
    assert [m.name for m in auto.middlewares] == ["client-tracing"]
    # one of the caller's own is kept, not doubled; metrics stay outermost
    mine = ClientTracing()
    given = Client(
        "127.0.0.1:1",
        settings=client_settings(GRPC_CLIENT_TRACING="on"),
        middlewares=[mine],
        metrics_registry=CollectorRegistry(),
    )
    assert [m.name for m in given.middlewares] == ["client-metrics", "client-tracing"]
    assert given.middlewares[1] is mine


_STANDALONE = """
import asyncio, sys
from gen.echo.v1 import EchoRequest, EchoServiceStub
from grpcstack import Client

async def main(port: int) -> None:
    async with Client(f"127.0.0.1:{port}") as client:
        await client.stub(EchoServiceStub).echo(EchoRequest(message="alone"), timeout=10)

asyncio.run(main(int(sys.argv[1])))
"""


async def test_a_client_alone_exports_its_spans_from_the_otel_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A program that only calls (no traced server to set the exporter up) with OTEL_* set:
    GRPC_CLIENT_TRACING=auto turns spans on, the first call installs the OTLP exporter, the
    span reaches a real OTLP receiver at exit, and its context reached the server."""
    collector = Collector()
    await collector.server.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "GRPC_CLIENT_"))}
    env.update(
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{collector.port}",
        OTEL_EXPORTER_OTLP_INSECURE="true",
        OTEL_SERVICE_NAME="standalone-client",
    )
    try:
        async with running(TracedEcho(settings(), None)) as server:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _STANDALONE, str(server.port), env=env
            )
            try:
                assert await asyncio.wait_for(proc.wait(), 120) == 0
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            (sent,) = server.traceparents
    finally:
        await collector.server.stop(None)
    # the SDK flushes its batch at exit: the span is there once the program ended
    ((service, span),) = collector.spans()
    assert service == "standalone-client"
    assert span.name == "echo.v1.EchoService/Echo" and span.kind == 3  # SPAN_KIND_CLIENT
    (traceparent,) = sent
    _, trace_id, span_id, _ = traceparent.split("-")
    assert span.trace_id.hex() == trace_id and span.span_id.hex() == span_id
    attrs = {a.key: a.value for a in span.attributes}
    assert attrs["rpc.grpc.status_code"].int_value == 0


async def test_client_latency_buckets_carry_the_trace_id_as_exemplar(
    provider: TracerProvider, spans: InMemorySpanExporter
) -> None:
    from prometheus_client.exposition import generate_latest
    from prometheus_client.openmetrics.exposition import generate_latest as openmetrics

    traced, plain = CollectorRegistry(), CollectorRegistry()
    async with running(TracedEcho(settings(GRPC_ENABLE_RATE_LIMITING=False), provider)) as server:
        target = f"127.0.0.1:{server.port}"
        s = client_settings()
        async with (
            Client(target, settings=s, metrics_registry=traced, middlewares=tracing(provider)) as a,
            Client(target, settings=s, metrics_registry=plain) as b,
        ):
            await a.stub(EchoServiceStub).echo(EchoRequest(message="x"), timeout=10)
            await b.stub(EchoServiceStub).echo(EchoRequest(message="x"), timeout=10)
    (client_span,) = of_kind(spans.get_finished_spans(), SpanKind.CLIENT)

    def exemplars(registry: CollectorRegistry) -> list[str]:
        text = openmetrics(registry).decode()
        return [
            line
            for line in text.splitlines()
            if line.startswith("grpc_client_handling_seconds_bucket{") and " # {" in line
        ]

    (line,) = exemplars(traced)
    assert f'trace_id="{format(client_span.context.trace_id, "032x")}"' in line
    assert f'span_id="{format(client_span.context.span_id, "016x")}"' in line
    assert exemplars(plain) == []
    assert b" # {" not in generate_latest(traced)  # the classic text format has none
