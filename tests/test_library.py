"""The stack as a library: hermetic testing helpers, handler unit tests, response metadata,
the declarative error map, services() mistakes and the overall health policy."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from gen.echo.v1 import EchoRequest, EchoResponse, EchoServiceBase, EchoServiceStub
from grpcstack import AsyncBaseServer, SettingsError
from grpcstack.context import add_initial_metadata, add_trailing_metadata, require_call
from grpcstack.definition import ServerDefinitionError
from grpcstack.testing import bound_socket, call_context, channel, make_settings, serve

ECHO = "echo.v1.EchoService"


class ItemNotFound(Exception):
    pass


class ItemGone(ItemNotFound):
    pass


class Conflict(Exception):
    pass


class Shop(EchoServiceBase):
    async def echo(self, message: EchoRequest) -> EchoResponse:
        call = require_call()
        add_initial_metadata({"x-served-by": "shop"})
        add_trailing_metadata([("x-user", call.user_id or "-")])
        if message.fail_with == "missing":
            raise ItemNotFound(f"no item {message.message!r}")
        if message.fail_with == "gone":
            raise ItemGone(f"item {message.message!r} was deleted")
        if message.fail_with == "conflict":
            raise Conflict("version 7 != 8 in shard 3")  # internal detail: never sent
        return EchoResponse(message=f"{call.user_id}:{call.metadata.get('x-tenant', '')}")

    async def expand(self, message: EchoRequest) -> AsyncIterator[EchoResponse]:
        add_initial_metadata({"x-stream": "yes", "x-blob-bin": b"\x00\x01"})
        for i in range(message.count):
            yield EchoResponse(index=i)
        try:
            add_initial_metadata({"x-late": "no"})
        except RuntimeError:  # the headers went out with the first message
            add_trailing_metadata({"x-late-refused": "yes"})
        add_trailing_metadata({"x-count": str(message.count)})


class ShopServer(AsyncBaseServer):
    error_map: ClassVar = {ItemNotFound: Status.NOT_FOUND, Conflict: (Status.ABORTED, "try again")}

    def services(self) -> list[Any]:
        return [Shop()]


# --- hermetic testing helpers -------------------------------------------------------------


@pytest.fixture
def noisy_developer_setup(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """What a developer's shell has while a dev server runs: .env values, taken ports, a typo."""
    taken = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = str(taken.getsockname()[1])
    (tmp_path / ".env").write_text("SERVICE_NAME=from-dotenv\nGRPC_ENABLE_AUTH=false\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GRPC_METRICS_PORT", port)
    monkeypatch.setenv("GRPC_METRICS_HOST", "127.0.0.1")
    monkeypatch.setenv("GRPC_SERVER_PORT", port)
    monkeypatch.setenv("GRPC_SERVR_PORT", port)
    try:
        yield
    finally:
        taken.close()


@pytest.mark.usefixtures("noisy_developer_setup")
async def test_serve_is_hermetic_and_channel_sends_default_metadata() -> None:
    async with serve(ShopServer) as server:
        assert server.settings.SERVICE_NAME == "grpc-service"  # not .env's
        assert server.settings.GRPC_ENABLE_AUTH is True  # not .env's
        assert server.metrics_exporter is None  # the dev server's metrics port is not used
        async with channel(server) as ch:
            with pytest.raises(GRPCError) as err:
                await EchoServiceStub(ch).echo(EchoRequest())
            assert err.value.status is Status.UNAUTHENTICATED
        async with channel(server, metadata={"user-id": "alice"}) as ch:
            stub = EchoServiceStub(ch)
            assert (await stub.echo(EchoRequest())).message == "alice:"
            reply = await stub.echo(EchoRequest(), metadata={"x-tenant": "acme"})
            assert reply.message == "alice:acme"
            reply = await stub.echo(EchoRequest(), metadata={"user-id": "bob"})
            assert reply.message == "bob:"  # a call's own metadata wins


@pytest.mark.usefixtures("noisy_developer_setup")
async def test_serve_overrides_and_explicit_settings() -> None:
    async with serve(ShopServer, GRPC_ENABLE_AUTH=False, SERVICE_NAME="shop") as server:
        assert server.settings.SERVICE_NAME == "shop"
        async with channel(server) as ch:
            assert (await EchoServiceStub(ch).echo(EchoRequest())).message == "None:"
    explicit = make_settings(GRPC_ENABLE_AUTH=False)
    async with serve(ShopServer, settings=explicit) as server:
        assert server.settings is explicit


async def test_serve_argument_mistakes() -> None:
    with pytest.raises(SettingsError, match="did you mean GRPC_ENABLE_AUTH"):
        async with serve(ShopServer, GRPC_ENABLE_AUHT=False):
            pass
    with pytest.raises(TypeError, match="not both"):
        async with serve(ShopServer, settings=make_settings(), GRPC_ENABLE_AUTH=False):
            pass
    with pytest.raises(TypeError, match="settings apply when serving a class"):
        async with serve(ShopServer(make_settings()), GRPC_ENABLE_AUTH=False):
            pass


# --- handler unit tests without a server ----------------------------------------------------


async def test_call_context_runs_a_handler_without_a_server() -> None:
    with call_context(metadata={"x-tenant": "acme"}, user_id="bob", timeout=5) as call:
        reply = await Shop().echo(EchoRequest())
        remaining = call.time_remaining()
    assert reply.message == "bob:acme"
    assert remaining is not None and 0 < remaining <= 5
    assert call.response_initial_metadata == [("x-served-by", "shop")]
    assert call.response_trailing_metadata == [("x-user", "bob")]


async def test_call_context_errors_and_streams() -> None:
    with call_context(), pytest.raises(ItemNotFound):
        await Shop().echo(EchoRequest(message="x", fail_with="missing"))
    with call_context(cardinality=Cardinality.UNARY_STREAM) as call:
        replies = [r.index async for r in Shop().expand(EchoRequest(count=3))]
    assert replies == [0, 1, 2]
    assert call.response_trailing_metadata == [("x-count", "3")]


async def test_outside_a_call_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match=r"testing\.call_context\(\)"):
        await Shop().echo(EchoRequest())
    with pytest.raises(RuntimeError, match="no gRPC call"):
        add_trailing_metadata({"k": "v"})


@pytest.mark.parametrize(
    ("metadata", "error"),
    [
        ({"X-Upper": "v"}, ValueError),  # keys are lower-case
        ({"grpc-status": "0"}, ValueError),  # reserved
        ({"k": "line\nbreak"}, ValueError),
        ({"k-bin": "not bytes"}, TypeError),
        ({"k": b"bytes without -bin"}, TypeError),
    ],
)
def test_invalid_response_metadata_raises_in_the_handler(
    metadata: dict[str, Any], error: type[Exception]
) -> None:
    with call_context() as call:
        with pytest.raises(error):
            add_initial_metadata(metadata)
        with pytest.raises(error):
            add_trailing_metadata(metadata)
    assert call.response_initial_metadata is None and call.response_trailing_metadata is None


# --- response metadata on the wire ----------------------------------------------------------


async def _raw_unary(ch: Channel, request: EchoRequest) -> tuple[Any, dict[str, Any], Any]:
    async with ch.request(
        f"/{ECHO}/Echo",
        Cardinality.UNARY_UNARY,
        EchoRequest,
        EchoResponse,
        metadata={"user-id": "carol"},
    ) as stream:
        await stream.send_message(request, end=True)
        try:
            reply = await stream.recv_message()
            await stream.recv_trailing_metadata()
            error = None
        except GRPCError as exc:
            reply, error = None, exc
        headers = dict(stream.initial_metadata or {})
        headers.update(stream.trailing_metadata or {})
        return reply, headers, error


async def test_handler_metadata_reaches_the_client() -> None:
    async with serve(ShopServer) as server, channel(server) as ch:
        # the transport writes the call's own headers: no middleware of the default chain
        # listens to the initial-metadata event (~7 us per call when one does)
        assert server.chain is not None and not server.chain._initial_listening
        async with ch.request(
            f"/{ECHO}/Echo",
            Cardinality.UNARY_UNARY,
            EchoRequest,
            EchoResponse,
            metadata={"user-id": "carol"},
        ) as stream:
            await stream.send_message(EchoRequest(), end=True)
            await stream.recv_initial_metadata()
            assert stream.initial_metadata is not None
            assert stream.initial_metadata["x-served-by"] == "shop"  # on the first call
            assert len(stream.initial_metadata["x-correlation-id"]) == 32  # generated, echoed
            assert (await stream.recv_message()).message == "carol:"
            await stream.recv_trailing_metadata()
            assert stream.trailing_metadata is not None
            assert stream.trailing_metadata["x-user"] == "carol"
        async with ch.request(
            f"/{ECHO}/Expand",
            Cardinality.UNARY_STREAM,
            EchoRequest,
            EchoResponse,
            metadata={"user-id": "carol"},
        ) as stream:
            await stream.send_message(EchoRequest(count=2), end=True)
            await stream.recv_initial_metadata()
            assert stream.initial_metadata is not None
            assert stream.initial_metadata["x-stream"] == "yes"
            assert stream.initial_metadata["x-blob-bin"] == b"\x00\x01"
            assert [m.index async for m in stream] == [0, 1]
            await stream.recv_trailing_metadata()
            assert stream.trailing_metadata is not None
            assert stream.trailing_metadata["x-count"] == "2"
            assert stream.trailing_metadata["x-late-refused"] == "yes"
            assert "x-late" not in stream.initial_metadata


async def test_error_responses_carry_handler_metadata() -> None:
    async with serve(ShopServer) as server, channel(server) as ch:
        reply, headers, error = await _raw_unary(ch, EchoRequest(message="x", fail_with="missing"))
        assert reply is None and error is not None and error.status is Status.NOT_FOUND
        assert headers["x-user"] == "carol"
        assert headers["x-served-by"] == "shop"  # trailers-only: the only headers there are


# --- the declarative error map ----------------------------------------------------------------


class SubShopServer(ShopServer):
    error_map: ClassVar = {KeyError: (Status.FAILED_PRECONDITION, "stock unknown")}


@pytest.mark.parametrize("server_class", [ShopServer, SubShopServer])
async def test_error_map(server_class: type[ShopServer]) -> None:
    async with serve(server_class) as server:
        async with channel(server, metadata={"user-id": "u"}) as ch:
            stub = EchoServiceStub(ch)
            cases = [
                ("missing", Status.NOT_FOUND, "no item 'a'"),
                ("gone", Status.NOT_FOUND, "item 'a' was deleted"),  # subclass of a mapped type
                ("conflict", Status.ABORTED, "try again"),  # fixed message, detail kept server-side
            ]
            for fail_with, status, message in cases:
                with pytest.raises(GRPCError) as err:
                    await stub.echo(EchoRequest(message="a", fail_with=fail_with))
                assert (err.value.status, err.value.message) == (status, message)
        rules = server.chain.middlewares[-1].rules  # type: ignore[union-attr]
        assert (KeyError in rules and rules[KeyError].status) == (
            Status.FAILED_PRECONDITION if server_class is SubShopServer else Status.NOT_FOUND
        )


async def test_bad_error_map_is_reported_at_start() -> None:
    class Broken(ShopServer):
        error_map: ClassVar = {ItemNotFound: 5}  # type: ignore[dict-item]

    with pytest.raises(
        TypeError, match=r"error_map\[ItemNotFound\] must be a grpclib.const.Status"
    ):
        async with serve(Broken):
            pass


# --- services() mistakes --------------------------------------------------------------------


class ReturnsClass(AsyncBaseServer):
    def services(self) -> Any:
        return [Shop]


class ReturnsSingle(AsyncBaseServer):
    def services(self) -> Any:
        return Shop()


class ReturnsBareClass(AsyncBaseServer):
    def services(self) -> Any:
        return Shop


class ReturnsJunk(AsyncBaseServer):
    def services(self) -> Any:
        return [Shop(), "shop"]


class ReturnsNothing(AsyncBaseServer):
    def services(self) -> Any:
        return []


class NotImplemented_(AsyncBaseServer):
    pass


@pytest.mark.parametrize(
    ("server_class", "message"),
    [
        (ReturnsClass, "ReturnsClass.services() returned the class Shop, not an instance: "),
        (ReturnsSingle, "ReturnsSingle.services() returned a single Shop, not a list: "),
        (ReturnsBareClass, "ReturnsBareClass.services() returned the class Shop, not a list"),
        (ReturnsJunk, "ReturnsJunk.services() returned a str, which is not a gRPC service"),
        (ReturnsNothing, "ReturnsNothing.services() returned no services"),
        (NotImplemented_, "NotImplemented_ must implement services(): "),
    ],
)
async def test_services_mistakes_are_one_line_errors_at_start(
    server_class: type[AsyncBaseServer], message: str
) -> None:
    server = server_class(make_settings())
    sock = bound_socket()
    port = sock.getsockname()[1]
    with pytest.raises(ServerDefinitionError) as err:
        await server.start(sock=sock)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)
    assert server.grpc_server is None
    with socket.create_server(("127.0.0.1", port)):  # nothing left listening on its port
        pass


def test_cli_reports_services_mistake_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(
        "from grpcstack import AsyncBaseServer\n"
        "from platform_services.echo import EchoService\n\n"
        "class Server(AsyncBaseServer):\n"
        "    def services(self):\n"
        "        return [EchoService]\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRPC_")}
    out = subprocess.run(
        [str(Path(sys.executable).parent / "grpcstack"), "serve", "app:Server", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
    )
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "grpcstack: Server.services() returned the class EchoService, not an instance: "
        "put EchoService(...) in the list"
    )


# --- overall health policy --------------------------------------------------------------------

SERVING = HealthCheckResponse.SERVING
NOT_SERVING = HealthCheckResponse.NOT_SERVING


async def test_overall_health_follows_shared_checks_not_one_service() -> None:
    shared_ok = True

    async def engine_ready() -> bool:
        return False  # one service's own dependency is down

    async def database_ready() -> bool:
        return shared_ok

    server = ShopServer(make_settings())
    server.add_readiness_check(engine_ready, service=ECHO)
    server.add_readiness_check(database_ready)
    async with serve(server), channel(server) as ch:
        health = HealthStub(ch)
        assert (await health.Check(HealthCheckRequest(service=ECHO))).status == NOT_SERVING
        assert (await health.Check(HealthCheckRequest())).status == SERVING
        shared_ok = False
        assert (await health.Check(HealthCheckRequest())).status == NOT_SERVING
        assert (await health.Check(HealthCheckRequest(service=ECHO))).status == NOT_SERVING
