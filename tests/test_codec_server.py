"""The codec on a served stack: wrong response types, malformed requests, the escape hatch, and a
cached response served from its stored bytes."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from calls import call
from conftest import running, settings
from grpclib.const import Status

from gen.echo.v1 import EchoRequest, EchoResponse, EchoServiceBase
from grpcstack import AsyncBaseServer
from grpcstack.cache import cached
from grpcstack.codec import PreEncoded


class Quirky(EchoServiceBase):
    def __init__(self) -> None:
        self.loads = 0
        self.returned: list[type] = []

    async def echo(self, message: EchoRequest) -> EchoResponse:
        if message.message == "wrong-type":
            return EchoRequest(message="oops")  # type: ignore[return-value]
        if message.message == "raw-bytes":
            return b"\x0a\x01x"  # type: ignore[return-value]
        if message.message == "pre-encoded":
            return PreEncoded(bytes(EchoResponse(message="from bytes")))  # type: ignore[return-value]
        return EchoResponse(message=message.message)

    @cached(ttl=60)
    async def collect(self, messages: Any) -> EchoResponse:  # not unary: rejected at start
        raise AssertionError


class CachedEcho(EchoServiceBase):
    def __init__(self) -> None:
        self.loads = 0

    @cached(ttl=60)
    async def echo(self, message: EchoRequest) -> EchoResponse:
        self.loads += 1
        return EchoResponse(message=message.message * 2, payload_size=len(message.payload))


class One(AsyncBaseServer):
    def __init__(self, service: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.service = service

    def services(self) -> list[Any]:
        return [self.service]


class QuirkyEcho(Quirky):
    collect = EchoServiceBase.collect  # drop the invalid @cached for the served tests


@pytest.mark.parametrize("codec", ["plan", "betterproto2"])
async def test_wrong_types_are_internal_and_logged(
    codec: str, pb2: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    server = One(QuirkyEcho(), settings(GRPC_CODEC=codec))
    async with running(server):
        ok = await call("grpcio", server.port, "Echo", EchoRequest(message="fine"), pb2=pb2)
        assert ok.status is Status.OK and ok.responses[0].message == "fine"
        pre = await call("grpclib", server.port, "Echo", EchoRequest(message="pre-encoded"))
        assert pre.status is Status.OK and pre.responses[0].message == "from bytes"
        for what, names in (
            ("wrong-type", "EchoResponse, not gen.echo.v1.EchoRequest"),
            ("raw-bytes", "PreEncoded"),
        ):
            out = await call("grpcio", server.port, "Echo", EchoRequest(message=what), pb2=pb2)
            assert out.status is Status.INTERNAL and out.message == "Internal error"
            assert any(names in str(r.exc_info[1]) for r in caplog.records if r.exc_info)


async def test_cached_on_a_streaming_method_is_refused_at_start() -> None:
    server = One(Quirky(), settings())
    with pytest.raises(TypeError, match="@cached needs a unary method"):
        await server.start()


async def test_cache_hits_are_served_as_stored_bytes(pb2: Any) -> None:
    service = CachedEcho()
    server = One(service, settings())
    async with running(server):
        for client in ("grpclib", "grpcio", "grpclib"):
            out = await call(
                client, server.port, "Echo", EchoRequest(message="ab", payload=b"xyz"), pb2=pb2
            )
            assert out.status is Status.OK
            assert (out.responses[0].message, out.responses[0].payload_size) == ("abab", 3)
    assert service.loads == 1
    # called directly (not as the RPC being served) the method still returns a message
    direct = await service.echo(EchoRequest(message="ab", payload=b"xyz"))
    assert isinstance(direct, EchoResponse) and direct.message == "abab"


async def test_malformed_request_names_the_problem(pb2: Any) -> None:
    import grpc

    server = One(QuirkyEcho(), settings())
    async with running(server), grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        raw = ch.unary_unary("/echo.v1.EchoService/Echo")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await raw(b"\x0a\x05ab", timeout=5)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "length past the end" in (err.value.details() or "")


async def test_wrong_types_over_connect_json_are_internal(caplog: pytest.LogCaptureFixture) -> None:
    """Over HTTP/JSON too: a handler's message of another type is never printed as JSON (the
    direct printer serves the declared type only; the codec reports the rest)."""
    import httpx

    caplog.set_level(logging.ERROR)
    server = One(QuirkyEcho(), settings(GRPC_HTTP_PORT=0))
    async with (
        running(server),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http_port}", timeout=30) as c,
    ):
        path = "/echo.v1.EchoService/Echo"
        r = await c.post(path, json={"message": "fine"})
        assert (r.status_code, r.json()) == (200, {"message": "fine"})
        r = await c.post(path, json={"message": "pre-encoded"})
        assert (r.status_code, r.json()) == (200, {"message": "from bytes"})
        for what, names in (
            ("wrong-type", "EchoResponse, not gen.echo.v1.EchoRequest"),
            ("raw-bytes", "PreEncoded"),
        ):
            r = await c.post(path, json={"message": what})
            assert (r.status_code, r.json()["code"]) == (500, "internal"), what
            assert any(names in str(rec.exc_info[1]) for rec in caplog.records if rec.exc_info)
