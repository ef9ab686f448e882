"""The chain itself: order, selectors, protection from faulty hooks, cancellation bookkeeping,
auth verifiers, the concurrency limit, correlation-id propagation and the /metrics exporter."""

from __future__ import annotations

import asyncio
import errno
import json
import shutil
import socket
import subprocess
from typing import Any

import grpc
import pytest
from calls import call
from conftest import bound_socket, channel, running, settings
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest
from server_metrics import handled as counted
from server_metrics import server_counted
from waiting import eventually

from gen.echo.v1 import EchoRequest, EchoResponse, EchoServiceBase, EchoServiceStub
from grpcstack import AsyncBaseServer
from grpcstack.context import current_call, outgoing_metadata
from grpcstack.middleware import (
    AuthMiddleware,
    HmacTokenVerifier,
    Middleware,
    make_token,
    methods,
)
from platform_services.echo import EchoServer

ECHO_SERVICE = "echo.v1.EchoService"


def handled(server: AsyncBaseServer, method: str, code: str, grpc_type: str = "unary") -> float:
    value = server.metrics_registry.get_sample_value(
        "grpc_server_handled_total",
        {
            "grpc_service": "echo.v1.EchoService",
            "grpc_method": method,
            "grpc_type": grpc_type,
            "grpc_code": code,
        },
    )
    return value or 0.0


def in_flight(server: AsyncBaseServer, method: str = "Echo", grpc_type: str = "unary") -> float:
    value = server.metrics_registry.get_sample_value(
        "grpc_server_in_flight",
        {"grpc_service": "echo.v1.EchoService", "grpc_method": method, "grpc_type": grpc_type},
    )
    return value or 0.0


class Recorder(Middleware):
    """Records the order of its hooks into a shared list."""

    trusted = True

    def __init__(self, tag: str, log: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tag, self.log = tag, log

    async def on_request(self, event: Any, call: Any) -> None:
        self.log.append(f"{self.tag}.request")

    async def on_initial_metadata(self, event: Any, call: Any) -> None:
        self.log.append(f"{self.tag}.initial")

    async def on_trailers(self, event: Any, call: Any) -> None:
        self.log.append(f"{self.tag}.trailers")

    def on_done(self, call: Any) -> None:
        self.log.append(f"{self.tag}.done:{call.status.name}")


class Reject(Middleware):
    async def on_request(self, event: Any, call: Any) -> None:
        raise GRPCError(Status.PERMISSION_DENIED, "rejected by B")


class CustomServer(EchoServer):
    def __init__(self, *args: Any, extra: list[Middleware], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.extra = extra

    def middlewares(self) -> list[Middleware]:
        return [*super().middlewares(), *self.extra]


async def test_onion_order_and_selector() -> None:
    log: list[str] = []
    only_echo = methods("/echo.v1.EchoService/Echo")
    server = CustomServer(
        settings(),
        extra=[Recorder("A", log), Recorder("B", log, selector=only_echo), Recorder("C", log)],
    )
    async with running(server), channel(server) as ch:
        stub = EchoServiceStub(ch)
        await stub.echo(EchoRequest(message="x"))
        assert log == [
            "A.request",
            "B.request",
            "C.request",
            "C.initial",
            "B.initial",
            "A.initial",
            "C.trailers",
            "B.trailers",
            "A.trailers",
            "C.done:OK",
            "B.done:OK",
            "A.done:OK",
        ]
        log.clear()
        await stub.collect([EchoRequest(message="y")])  # B's selector admits only Echo
        assert [e for e in log if e.startswith("B")] == []
        assert log[0] == "A.request" and log[-1] == "A.done:OK"


async def test_rejection_only_unwinds_reached_middlewares() -> None:
    log: list[str] = []
    server = CustomServer(settings(), extra=[Recorder("A", log), Reject(), Recorder("C", log)])
    async with running(server), channel(server) as ch:
        with pytest.raises(GRPCError) as err:
            await EchoServiceStub(ch).echo(EchoRequest())
    assert err.value.status is Status.PERMISSION_DENIED
    assert log == ["A.request", "A.trailers", "A.done:PERMISSION_DENIED"]


class RaisingHooks(Middleware):
    async def on_initial_metadata(self, event: Any, call: Any) -> None:
        raise RuntimeError("initial hook bug")

    async def on_trailers(self, event: Any, call: Any) -> None:
        raise RuntimeError("trailer hook bug")


class InvalidMetadata(Middleware):
    async def on_initial_metadata(self, event: Any, call: Any) -> None:
        event.metadata["Upper-Case"] = "x"

    async def on_trailers(self, event: Any, call: Any) -> None:
        event.metadata["x-note"] = "non-ascii: \u00e9"


class FailingRequestHook(Middleware):
    async def on_request(self, event: Any, call: Any) -> None:
        raise KeyError("a bug in a middleware")


@pytest.mark.parametrize("client", ["grpclib", "grpcio"])
@pytest.mark.parametrize("faulty", [RaisingHooks, InvalidMetadata])
async def test_faulty_response_hooks_never_hang_the_client(
    pb2: Any, client: str, faulty: type
) -> None:
    server = CustomServer(settings(), extra=[faulty()])
    async with running(server):
        for method in ("Echo", "Expand", "Chat"):
            out = await asyncio.wait_for(
                call(
                    client,
                    server.port,
                    method,
                    EchoRequest(message="m", count=1),
                    pb2=pb2,
                    timeout=5,
                ),
                8,
            )
            assert out.status is Status.OK, (method, out.message)
            assert [r.message for r in out.responses] == ["m"]
            assert "x-correlation-id" in out.initial  # the valid metadata was kept
            assert "upper-case" not in out.initial and "x-note" not in out.trailing
        # and error responses still carry their status
        out = await call(
            client, server.port, "Echo", EchoRequest(fail_with="ValueError"), pb2=pb2, timeout=5
        )
        assert out.status is Status.INVALID_ARGUMENT


async def test_request_hook_bug_is_internal_not_unknown() -> None:
    server = CustomServer(settings(), extra=[FailingRequestHook()])
    async with running(server), channel(server) as ch:
        with pytest.raises(GRPCError) as err:
            await EchoServiceStub(ch).echo(EchoRequest())
    assert err.value.status is Status.INTERNAL and err.value.message == "Internal error"
    assert handled(server, "Echo", "Internal") == 1


async def test_client_cancel_is_counted_canceled_once(pb2: Any) -> None:
    server = EchoServer(settings())
    async with running(server), channel(server) as ch:
        before = counted(server, ECHO_SERVICE)
        task = asyncio.create_task(EchoServiceStub(ch).echo(EchoRequest(sleep_seconds=10)))
        await server.echo.started.wait()
        task.cancel()
        await server_counted(server, ECHO_SERVICE, before, {("Echo", "Canceled"): 1})
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as gch:
            gcall = pb2.echo_grpc.EchoServiceStub(gch).Chat(
                iter([pb2.echo.EchoRequest(sleep_seconds=10)])
            )
            await eventually(lambda: in_flight(server, "Chat", "bidi_stream") == 1)
            gcall.cancel()
            await server_counted(
                server, ECHO_SERVICE, before, {("Echo", "Canceled"): 1, ("Chat", "Canceled"): 1}
            )


async def test_lost_connection_is_counted_once() -> None:
    server = EchoServer(settings())
    async with running(server):
        ch = Channel("127.0.0.1", server.port)
        task = asyncio.create_task(EchoServiceStub(ch).echo(EchoRequest(sleep_seconds=10)))
        await server.echo.started.wait()
        before = counted(server, ECHO_SERVICE)
        ch.close()  # drops the TCP connection under the call
        with pytest.raises(BaseException):  # noqa: B017 - any client-side error will do
            await task
        await server_counted(server, ECHO_SERVICE, before, {("Echo", "Canceled"): 1})


async def test_stop_cancelled_call_is_counted_once_as_unavailable() -> None:
    server = EchoServer(settings())
    async with running(server), channel(server) as ch:
        task = asyncio.create_task(EchoServiceStub(ch).echo(EchoRequest(sleep_seconds=10)))
        await server.echo.started.wait()
        await server.stop(0.1)
        with pytest.raises(GRPCError) as err:
            await task
        assert err.value.status is Status.UNAVAILABLE
    assert handled(server, "Echo", "Unavailable") == 1
    assert handled(server, "Echo", "Canceled") == 0
    assert in_flight(server) == 0


async def test_deadline_is_deadline_exceeded(pb2: Any) -> None:
    """grpcio's own timer and the server's deadline race; whichever wins (the server's status, or
    the client's RST_STREAM at its deadline), the server must count DeadlineExceeded.
    tests/test_limits.py checks the server's own answer with a client that has no timer."""
    server = EchoServer(settings())
    async with running(server):
        before = counted(server, ECHO_SERVICE)
        out = await call(
            "grpcio", server.port, "Echo", EchoRequest(sleep_seconds=30), pb2=pb2, timeout=0.3
        )
        assert out.status is Status.DEADLINE_EXCEEDED
        await server_counted(server, ECHO_SERVICE, before, {("Echo", "DeadlineExceeded"): 1})


async def test_concurrency_limit() -> None:
    server = EchoServer(settings(GRPC_MAX_CONCURRENT_RPCS=2))
    async with running(server), channel(server) as ch:
        stub = EchoServiceStub(ch)
        slow = [asyncio.create_task(stub.echo(EchoRequest(sleep_seconds=30))) for _ in range(2)]
        await eventually(lambda: in_flight(server) == 2)  # both hold a slot on the server
        with pytest.raises(GRPCError) as err:
            await stub.echo(EchoRequest())
        assert err.value.status is Status.RESOURCE_EXHAUSTED
        assert "concurrent call limit of 2" in (err.value.message or "")
        # probes are not counted against the limit
        assert (await HealthStub(ch).Check(HealthCheckRequest())).status == 1
        for task in slow:
            task.cancel()
        await asyncio.gather(*slow, return_exceptions=True)
        await eventually(lambda: in_flight(server) == 0)  # the slots are free again
        assert (await stub.echo(EchoRequest(message="again"))).message == "again"
    assert handled(server, "Echo", "ResourceExhausted") == 1


async def test_hmac_tokens_and_permission_denied(pb2: Any) -> None:
    secret = "s3cret"

    class TokenServer(EchoServer):
        def middlewares(self) -> list[Middleware]:
            chain = super().middlewares()
            chain[1] = AuthMiddleware(  # replace the header verifier
                verifier=HmacTokenVerifier(secret),
                authorize=lambda user, method: user != "mallory",
            )
            return chain

    server = TokenServer(settings(GRPC_ENABLE_AUTH=True))
    async with running(server):

        def bearer(user: str, **kw: Any) -> dict[str, str]:
            return {"authorization": f"Bearer {make_token(secret, user, **kw)}"}

        for client in ("grpclib", "grpcio"):
            ok = await call(
                client,
                server.port,
                "Echo",
                EchoRequest(message="t"),
                metadata=bearer("alice"),
                pb2=pb2,
            )
            assert ok.status is Status.OK
            cases = [
                ({}, Status.UNAUTHENTICATED, "missing credentials"),
                ({"user-id": "alice"}, Status.UNAUTHENTICATED, "missing credentials"),
                ({"authorization": "Basic abc"}, Status.UNAUTHENTICATED, "Bearer"),
                (
                    {"authorization": f"Bearer {make_token('wrong', 'alice')}"},
                    Status.UNAUTHENTICATED,
                    "invalid token signature",
                ),
                (bearer("alice", ttl=-3600), Status.UNAUTHENTICATED, "token expired"),
                (bearer("mallory"), Status.PERMISSION_DENIED, "mallory may not call"),
            ]
            for metadata, status, fragment in cases:
                out = await call(
                    client, server.port, "Echo", EchoRequest(), metadata=metadata, pb2=pb2
                )
                assert out.status is status, metadata
                assert fragment in (out.message or ""), out.message


async def test_hmac_mode_and_exempt_methods_from_the_environment(
    pb2: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GRPC_AUTH_MODE=hmac, GRPC_AUTH_HMAC_SECRET and a custom GRPC_AUTH_EXEMPT_METHODS, read
    from the environment by the settings, build the server's own chain (no hand-made verifier)."""
    secret = "from-the-environment"
    monkeypatch.setenv("GRPC_AUTH_MODE", "hmac")
    monkeypatch.setenv("GRPC_AUTH_HMAC_SECRET", secret)
    monkeypatch.setenv("GRPC_AUTH_EXEMPT_METHODS", '["/echo.v1.EchoService/Expand"]')
    server = EchoServer(settings(GRPC_ENABLE_AUTH=True))  # the rest comes from the environment
    assert server.settings.GRPC_AUTH_MODE == "hmac"
    async with running(server):
        token = {"authorization": f"Bearer {make_token(secret, 'alice')}"}
        for client in ("grpclib", "grpcio"):
            ok = await call(
                client, server.port, "Echo", EchoRequest(message="t"), metadata=token, pb2=pb2
            )
            assert ok.status is Status.OK and ok.responses[0].message == "t"
            # the header mode's user-id is not a credential in hmac mode
            out = await call(
                client, server.port, "Echo", EchoRequest(), metadata={"user-id": "alice"}, pb2=pb2
            )
            assert out.status is Status.UNAUTHENTICATED, out.message
            forged = {"authorization": f"Bearer {make_token('other-secret', 'alice')}"}
            out = await call(client, server.port, "Echo", EchoRequest(), metadata=forged, pb2=pb2)
            assert out.status is Status.UNAUTHENTICATED
            assert "invalid token signature" in (out.message or "")
            # the custom exempt list: Expand needs no credentials
            out = await call(
                client, server.port, "Expand", EchoRequest(message="e", count=1), pb2=pb2
            )
            assert out.status is Status.OK and [r.message for r in out.responses] == ["e"]
        # the custom list replaces the default one: health is no longer exempt
        async with channel(server) as ch:
            with pytest.raises(GRPCError) as err:
                await HealthStub(ch).Check(HealthCheckRequest())
            assert err.value.status is Status.UNAUTHENTICATED
    assert handled(server, "Echo", "OK") == 2
    assert handled(server, "Echo", "Unauthenticated") == 4
    assert handled(server, "Expand", "OK", "server_stream") == 2


async def test_hmac_mode_without_a_secret_does_not_start() -> None:
    from grpcstack import SettingsError

    with pytest.raises((SettingsError, ValueError), match="GRPC_AUTH_HMAC_SECRET"):
        EchoServer(settings(GRPC_ENABLE_AUTH=True, GRPC_AUTH_MODE="hmac"))


class Relay(EchoServiceBase):
    """Calls the downstream server while serving, forwarding the correlation id."""

    def __init__(self) -> None:
        self.downstream_port = 0
        self.seen: list[str | None] = []

    async def echo(self, message: EchoRequest) -> EchoResponse:
        call_ctx = current_call()
        assert call_ctx is not None
        self.seen.append(call_ctx.correlation_id)
        ch = Channel("127.0.0.1", self.downstream_port)
        try:
            reply = await EchoServiceStub(ch).echo(message, metadata=outgoing_metadata())
        finally:
            ch.close()
        return EchoResponse(message=f"relayed {reply.message}")


class RelayServer(AsyncBaseServer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.relay = Relay()

    def services(self) -> list[Any]:
        return [self.relay]


async def test_correlation_id_propagates_to_downstream_calls(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    caplog.set_level(logging.INFO)
    downstream = EchoServer(settings())
    front = RelayServer(settings())
    async with running(downstream), running(front):
        front.relay.downstream_port = downstream.port
        out = await call(
            "grpclib",
            front.port,
            "Echo",
            EchoRequest(message="x"),
            metadata={"x-correlation-id": "trace-7"},
        )
        assert out.status is Status.OK and out.responses[0].message == "relayed x"
        generated = await call("grpclib", front.port, "Echo", EchoRequest(message="y"))
    assert front.relay.seen[0] == "trace-7"
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "grpcstack.access"]
    by_cid: dict[str, int] = {}
    for line in lines:
        by_cid[line["correlation_id"]] = by_cid.get(line["correlation_id"], 0) + 1
    assert by_cid["trace-7"] == 2  # one line on each server
    assert by_cid[generated.initial["x-correlation-id"]] == 2


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start_with_metrics(**overrides: Any) -> EchoServer:
    """An EchoServer with its /metrics exporter on a free port. The exporter binds a port number
    (0 means off), so another process may take the port between the probe and the bind: retry."""
    for _ in range(5):
        server = EchoServer(settings(GRPC_METRICS_PORT=free_port(), **overrides))
        try:
            await server.start(sock=bound_socket())
            return server
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
    raise AssertionError("no free port for the metrics exporter in 5 tries")


async def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = data.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


async def test_metrics_exporter_preinitialised_and_promtool_clean(pb2: Any, tmp_path: Any) -> None:
    server = await start_with_metrics(GRPC_ENABLE_AUTH=True)
    assert server.metrics_exporter is not None
    port = server.metrics_exporter.port
    try:
        status, body = await scrape(port)
        assert status == 200
        # every method is there before any call, with every code
        for method in ("Echo", "Collect", "Expand", "Chat"):
            assert f'grpc_method="{method}"' in body
        assert 'grpc_code="Unauthenticated",grpc_method="Chat"' in body
        await call("grpcio", server.port, "Echo", EchoRequest(), metadata={"user-id": "u"}, pb2=pb2)
        await call("grpcio", server.port, "Expand", EchoRequest(count=3), pb2=pb2)
        _, body = await scrape(port)
        assert (
            'grpc_server_handled_total{grpc_code="OK",grpc_method="Echo",'
            'grpc_service="echo.v1.EchoService",grpc_type="unary"} 1.0'
        ) in body
        assert (
            'grpc_server_msg_sent_total{grpc_method="Echo",grpc_service="echo.v1.EchoService"'
            ',grpc_type="unary"} 1.0'
        ) in body
        assert await scrape(port, "/nope") == (404, "not found\n")
        promtool = shutil.which("promtool")
        if promtool is not None:
            checked = await asyncio.to_thread(
                subprocess.run,
                [promtool, "check", "metrics"],
                input=body,
                text=True,
                capture_output=True,
                timeout=30,
            )
            assert checked.returncode == 0, checked.stdout + checked.stderr
    finally:
        await server.stop(1)
    # stopped with the server
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
    if promtool is None:  # everything else above ran; .ci/run installs promtool
        pytest.skip("promtool not installed (apt-get install prometheus): metrics not linted")


async def test_handler_reads_the_call_context() -> None:
    seen: dict[str, Any] = {}

    class Introspect(EchoServiceBase):
        async def echo(self, message: EchoRequest) -> EchoResponse:
            ctx = current_call()
            assert ctx is not None
            seen.update(
                method=ctx.method,
                service=ctx.service,
                type=ctx.grpc_type,
                user=ctx.user_id,
                cid=ctx.correlation_id,
                peer=ctx.peer_address,
                remaining=ctx.time_remaining(),
                meta=ctx.metadata.get("x-extra"),
            )
            return EchoResponse()

    class IntrospectServer(AsyncBaseServer):
        def services(self) -> list[Any]:
            return [Introspect()]

    server = IntrospectServer(settings(GRPC_ENABLE_AUTH=True))
    async with running(server), channel(server) as ch:
        await EchoServiceStub(ch).echo(
            EchoRequest(), metadata={"user-id": "carol", "x-extra": "1"}, timeout=5
        )
    assert seen["method"] == "/echo.v1.EchoService/Echo"
    assert seen["service"] == "echo.v1.EchoService" and seen["type"] == "unary"
    assert seen["user"] == "carol" and len(seen["cid"]) == 32 and seen["meta"] == "1"
    assert seen["peer"].startswith("127.0.0.1:")
    # the handler saw the client's 5 s deadline (less what the trip took), not none or another
    assert 1 < seen["remaining"] <= 5
