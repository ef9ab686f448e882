"""grpcstack.Client against a grpcio server, and the statuses a client derives from broken
answers (HTTP errors, wrong content type, unknown methods)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from client_helpers import client_settings, echo_server
from conftest import bound_socket
from grpclib.const import Status
from h2_peer import H2PeerServer

from gen.echo.v1 import EchoRequest, EchoServiceStub
from grpcstack.client import Client, MethodConfig, RetryPolicy, RpcError

NO_RETRY = {"echo.v1.EchoService": MethodConfig(timeout=10, retry=RetryPolicy(max_attempts=1))}


async def test_against_a_grpcio_server(pb2: Any) -> None:
    from grpclib.const import Cardinality

    class Servicer(pb2.echo_grpc.EchoServiceServicer):  # type: ignore[misc]
        async def Echo(self, request: Any, context: Any) -> Any:
            if request.fail_with:
                await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
            cid = dict(context.invocation_metadata()).get("x-correlation-id", "")
            await context.send_initial_metadata((("x-seen-cid", cid),))
            return pb2.echo.EchoResponse(message=request.message, payload_size=len(request.payload))

        async def Expand(self, request: Any, context: Any) -> Any:
            for i in range(request.count):
                yield pb2.echo.EchoResponse(message=request.message, index=i)

    server = grpc.aio.server()
    pb2.echo_grpc.add_EchoServiceServicer_to_server(Servicer(), server)
    sock = bound_socket()
    port = sock.getsockname()[1]
    sock.close()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        async with Client(f"127.0.0.1:{port}", settings=client_settings()) as client:
            stub = client.stub(EchoServiceStub)
            reply = await stub.echo(EchoRequest(message="to-grpcio", payload=b"xy"))
            assert (reply.message, reply.payload_size) == ("to-grpcio", 2)
            got = [r.index async for r in stub.expand(EchoRequest(message="s", count=3))]
            assert got == [0, 1, 2]
            with pytest.raises(RpcError) as err:
                await stub.echo(EchoRequest(fail_with="x"))
            assert (err.value.status, err.value.message) == (Status.NOT_FOUND, "no such thing")
            async with client.request(
                "/echo.v1.EchoService/Echo",
                Cardinality.UNARY_UNARY,
                EchoRequest,
                type(reply),
                metadata={"x-correlation-id": "cid-grpcio"},
            ) as call:
                await call.send_message(EchoRequest(message="m"), end=True)
                assert (await call.recv_message()).message == "m"
            assert call.initial_metadata is not None
            assert call.initial_metadata["x-seen-cid"] == "cid-grpcio"
    finally:
        await server.stop(None)


async def test_unknown_method_is_unimplemented() -> None:
    from grpclib.const import Cardinality

    async with echo_server() as server:
        async with Client(f"127.0.0.1:{server.port}", settings=client_settings()) as client:
            with pytest.raises(RpcError) as err:
                async with client.request(
                    "/echo.v1.EchoService/Nope", Cardinality.UNARY_UNARY, EchoRequest, EchoRequest
                ) as call:
                    await call.send_message(EchoRequest(), end=True)
                    await call.recv_message()
            assert err.value.status is Status.UNIMPLEMENTED


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ([(":status", "503")], Status.UNAVAILABLE),
        ([(":status", "404")], Status.UNIMPLEMENTED),
        ([(":status", "200"), ("content-type", "text/html")], Status.UNKNOWN),
        ([(":status", "200"), ("content-type", "application/grpc")], Status.UNKNOWN),
        (
            [(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", "99")],
            Status.UNKNOWN,
        ),
    ],
)
async def test_broken_answers_get_a_clear_status(
    headers: list[tuple[str, str]], status: Status
) -> None:
    async with H2PeerServer("raw_headers", trailers=headers) as peer:
        async with Client(
            f"127.0.0.1:{peer.port}", settings=client_settings(), methods=NO_RETRY
        ) as client:
            with pytest.raises(RpcError) as err:
                await client.stub(EchoServiceStub).echo(EchoRequest(message="x"))
            assert err.value.status is status
