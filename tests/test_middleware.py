"""Every rejection and error path of the default chain, for all four cardinalities, with the
grpclib and the grpcio client: the status, message and metadata the client sees, the metric
samples and the access log line."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from calls import CLIENTS, METHODS, call
from conftest import channel, running, settings
from grpclib.const import Cardinality, Status
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from grpclib.reflection.v1.reflection_pb2 import ServerReflectionRequest, ServerReflectionResponse

from gen.echo.v1 import EchoRequest, EchoResponse
from grpcstack.middleware.metrics import GO_CODE_NAMES
from platform_services.echo import EchoServer, EchoService

ECHO_SERVICE = "echo.v1.EchoService"

USER = {"user-id": "alice"}
GRPC_TYPE = {
    "Echo": "unary",
    "Collect": "client_stream",
    "Expand": "server_stream",
    "Chat": "bidi_stream",
}


def sample(server: EchoServer, name: str, method: str, **labels: str) -> float:
    value = server.metrics_registry.get_sample_value(
        name,
        {
            "grpc_service": "echo.v1.EchoService",
            "grpc_method": method,
            "grpc_type": GRPC_TYPE[method],
            **labels,
        },
    )
    return value or 0.0


def handled(server: EchoServer, method: str, status: Status) -> float:
    return sample(server, "grpc_server_handled_total", method, grpc_code=GO_CODE_NAMES[status])


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "grpcstack.access"]


class EnteredEcho(EchoService):
    """EchoService that records every handler it enters, whatever the cardinality."""

    def __init__(self) -> None:
        super().__init__()
        self.entered: list[str] = []

    async def echo(self, message: EchoRequest) -> EchoResponse:
        self.entered.append("Echo")
        return await super().echo(message)

    async def collect(self, messages: AsyncIterator[EchoRequest]) -> EchoResponse:
        self.entered.append("Collect")
        return await super().collect(messages)

    async def expand(self, message: EchoRequest) -> AsyncIterator[EchoResponse]:
        self.entered.append("Expand")
        async for reply in super().expand(message):
            yield reply

    async def chat(self, messages: AsyncIterator[EchoRequest]) -> AsyncIterator[EchoResponse]:
        self.entered.append("Chat")
        async for reply in super().chat(messages):
            yield reply


@pytest.fixture
async def server(caplog: pytest.LogCaptureFixture) -> AsyncIterator[EchoServer]:
    caplog.set_level(logging.INFO)
    srv = EchoServer(settings(GRPC_ENABLE_AUTH=True, GRPC_RATE_LIMIT_MAX_REQUESTS=1000))
    srv.echo = EnteredEcho()
    async with running(srv):
        yield srv


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("method", METHODS)
async def test_ok_call_counts_logs_and_echoes_correlation_id(
    server: EchoServer, caplog: pytest.LogCaptureFixture, pb2: Any, client: str, method: str
) -> None:
    out = await call(
        client,
        server.port,
        method,
        EchoRequest(message="hi", count=2),
        metadata={**USER, "x-correlation-id": "req-42"},
        pb2=pb2,
    )
    assert out.status is Status.OK, out.message
    assert [r.message for r in out.responses] == (["hi", "hi"] if method == "Expand" else ["hi"])
    assert server.echo.entered == [method]
    assert out.initial["x-correlation-id"] == "req-42"
    assert handled(server, method, Status.OK) == 1
    assert sample(server, "grpc_server_started_total", method) == 1
    assert sample(server, "grpc_server_msg_received_total", method) == 1
    assert sample(server, "grpc_server_msg_sent_total", method) == len(out.responses)
    assert sample(server, "grpc_server_handling_seconds_count", method) == 1
    assert sample(server, "grpc_server_in_flight", method) == 0
    (line,) = access_lines(caplog)
    assert line["grpc.method"] == method and line["grpc.code"] == "OK"
    assert line["grpc.method_type"] == GRPC_TYPE[method]
    assert line["level"] == "info" and line["user_id"] == "alice"
    assert line["correlation_id"] == "req-42" and line["error"] is None
    assert line["peer.address"].startswith("127.0.0.1:")
    assert "hi" not in json.dumps(line)  # no payloads


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({}, 'missing "user-id" metadata'),
        ({"user-id": "eve; drop table"}, 'invalid "user-id" metadata'),
    ],
)
async def test_unauthenticated(
    server: EchoServer,
    caplog: pytest.LogCaptureFixture,
    pb2: Any,
    client: str,
    method: str,
    metadata: dict[str, str],
    message: str,
) -> None:
    out = await call(
        client, server.port, method, EchoRequest(message="x"), metadata=metadata, pb2=pb2
    )
    assert out.status is Status.UNAUTHENTICATED
    assert out.message == message
    assert out.responses == []
    assert server.echo.entered == []  # no handler ran, whatever the cardinality
    assert handled(server, method, Status.UNAUTHENTICATED) == 1
    assert sample(server, "grpc_server_in_flight", method) == 0
    # onion semantics: Auth rejected the call, so the later middlewares never saw it
    assert "x-correlation-id" not in out.trailing
    assert access_lines(caplog) == []


ERRORS = [
    ("ValueError", Status.INVALID_ARGUMENT, "failing as asked with ValueError", "info"),
    ("KeyError", Status.NOT_FOUND, "not found", "info"),
    ("TimeoutError", Status.DEADLINE_EXCEEDED, "operation timed out", "warn"),
    ("RuntimeError", Status.INTERNAL, "Internal error", "error"),
    (
        "GRPCError:9",
        Status.FAILED_PRECONDITION,
        "failing as asked with FAILED_PRECONDITION",
        "warn",
    ),
]


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("fail_with", "status", "message", "level"), ERRORS)
async def test_handler_errors_become_statuses(
    server: EchoServer,
    caplog: pytest.LogCaptureFixture,
    pb2: Any,
    client: str,
    method: str,
    fail_with: str,
    status: Status,
    message: str,
    level: str,
) -> None:
    out = await call(
        client,
        server.port,
        method,
        EchoRequest(message="x", count=1, fail_with=fail_with),
        metadata=USER,
        pb2=pb2,
    )
    assert out.status is status
    assert out.message == message
    # Expand sends its message before failing; the others fail before any message
    assert len(out.responses) == (1 if method == "Expand" else 0)
    cid = out.metadata("x-correlation-id")
    assert cid and len(cid) == 32
    assert handled(server, method, status) == 1
    (line,) = access_lines(caplog)
    assert line["grpc.code"] == GO_CODE_NAMES[status] and line["level"] == level
    assert line["correlation_id"] == cid
    expected_error = None if fail_with.startswith("GRPCError") else fail_with
    assert line["error"] == expected_error
    tracebacks = [r for r in caplog.records if r.name == "grpcstack.errors"]
    if status is Status.INTERNAL:  # the traceback stays on the server, with the correlation id
        (record,) = tracebacks
        assert cid in record.getMessage() and record.exc_info is not None
    else:
        assert tracebacks == []


@pytest.mark.parametrize("client", CLIENTS)
async def test_invalid_correlation_id_is_replaced(
    server: EchoServer, pb2: Any, client: str
) -> None:
    out = await call(
        client,
        server.port,
        "Echo",
        EchoRequest(),
        metadata={**USER, "x-correlation-id": "bad id!" + "x" * 200},
        pb2=pb2,
    )
    cid = out.initial["x-correlation-id"]
    assert cid != "bad id!" and len(cid) == 32 and int(cid, 16) >= 0


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("method", METHODS)
async def test_rate_limited(
    caplog: pytest.LogCaptureFixture, pb2: Any, client: str, method: str
) -> None:
    caplog.set_level(logging.INFO)
    srv = EchoServer(
        settings(
            GRPC_ENABLE_AUTH=True, GRPC_RATE_LIMIT_MAX_REQUESTS=2, GRPC_RATE_LIMIT_WINDOW_SECONDS=60
        )
    )
    async with running(srv):
        for _ in range(2):
            ok = await call(client, srv.port, method, EchoRequest(), metadata=USER, pb2=pb2)
            assert ok.status is Status.OK
        out = await call(client, srv.port, method, EchoRequest(), metadata=USER, pb2=pb2)
        assert out.status is Status.RESOURCE_EXHAUSTED
        assert out.message and "per-caller rate limit of 2 requests per 60s exceeded" in out.message
        retry_ms = int(out.trailing["retry-after-ms"])
        assert 1 <= retry_ms <= 120_000
        assert "grpc-status-details-bin" in out.trailing or out.details
        # another user has a budget of its own
        other = await call(
            client, srv.port, method, EchoRequest(), metadata={"user-id": "bob"}, pb2=pb2
        )
        assert other.status is Status.OK
        assert handled(srv, method, Status.RESOURCE_EXHAUSTED) == 1
        assert handled(srv, method, Status.OK) == 3
        assert len(access_lines(caplog)) == 3  # the rejected call never reached Logging


async def test_rate_limit_retry_info_details_grpclib() -> None:
    from google.rpc.error_details_pb2 import RetryInfo

    srv = EchoServer(settings(GRPC_RATE_LIMIT_MAX_REQUESTS=1))
    async with running(srv):
        await call("grpclib", srv.port, "Echo", EchoRequest())
        out = await call("grpclib", srv.port, "Echo", EchoRequest())
    assert out.status is Status.RESOURCE_EXHAUSTED
    (info,) = out.details
    assert isinstance(info, RetryInfo)
    delay_ms = info.retry_delay.ToMilliseconds()
    assert delay_ms == int(out.trailing["retry-after-ms"])


LIST_SERVICES = ServerReflectionRequest(list_services="*")


@pytest.mark.parametrize("client", CLIENTS)
async def test_health_and_reflection_need_no_user_id(pb2: Any, client: str) -> None:
    """With auth on and a budget of one call, health and reflection (both versions) still answer
    a caller with no user id, again and again: exempt from Auth and from RateLimit."""
    srv = EchoServer(
        settings(
            GRPC_ENABLE_AUTH=True,
            GRPC_RATE_LIMIT_MAX_REQUESTS=1,
            GRPC_SERVER_ENABLE_REFLECTION=True,
        )
    )
    reflection = [
        f"/grpc.reflection.{v}.ServerReflection/ServerReflectionInfo" for v in ("v1", "v1alpha")
    ]
    async with running(srv):
        for _ in range(3):
            if client == "grpcio":
                async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
                    check = ch.unary_unary(
                        "/grpc.health.v1.Health/Check",
                        request_serializer=HealthCheckRequest.SerializeToString,
                        response_deserializer=HealthCheckResponse.FromString,
                    )
                    assert (await check(HealthCheckRequest(), timeout=5)).status == 1
                    for path in reflection:
                        info = ch.stream_stream(
                            path,
                            request_serializer=ServerReflectionRequest.SerializeToString,
                            response_deserializer=ServerReflectionResponse.FromString,
                        )
                        replies = [r async for r in info(iter([LIST_SERVICES]), timeout=5)]
                        assert ECHO_SERVICE in listed(replies)
            else:
                async with channel(srv) as ch:
                    assert (await HealthStub(ch).Check(HealthCheckRequest())).status == 1
                    for path in reflection:
                        async with ch.request(
                            path,
                            Cardinality.STREAM_STREAM,
                            ServerReflectionRequest,
                            ServerReflectionResponse,
                            timeout=5,
                        ) as st:
                            await st.send_message(LIST_SERVICES, end=True)
                            replies = [r async for r in st]
                        assert ECHO_SERVICE in listed(replies)
        # ...while an ordinary call without a user id is refused
        out = await call(client, srv.port, "Echo", EchoRequest(), pb2=pb2)
        assert out.status is Status.UNAUTHENTICATED


def listed(replies: list[Any]) -> list[str]:
    return [s.name for r in replies for s in r.list_services_response.service]
