"""Server options: message size limit on the prefix, SETTINGS, unknown methods, bad input."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import grpc
import h2.connection
import h2.events
import pytest
from conftest import channel, running, settings
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError
from h2.settings import SettingCodes
from h2_client import GRPC_HEADERS, grpc_frame, raw_h2
from server_metrics import handled, server_counted
from waiting import eventually

from gen.echo.v1 import EchoRequest, EchoServiceStub
from platform_services.echo import EchoServer

LIMIT = 1024 * 1024
ECHO_SERVICE = "echo.v1.EchoService"


async def test_oversized_message_rejected_on_its_prefix() -> None:
    """Only the 5-byte prefix announcing 1 GiB is sent: the answer cannot come from buffering."""
    server = EchoServer(settings(GRPC_MAX_MESSAGE_LENGTH=LIMIT))
    async with running(server), channel(server) as ch:
        with pytest.raises(GRPCError) as err:
            async with ch.request(
                "/echo.v1.EchoService/Echo", Cardinality.UNARY_UNARY, EchoRequest, EchoRequest
            ) as stream:
                await stream.send_request()
                await stream._stream.send_data(struct.pack(">?I", False, 2**30))
                await asyncio.wait_for(stream.recv_message(), 5)
        assert err.value.status is Status.RESOURCE_EXHAUSTED
        assert f"{2**30} vs. {LIMIT}" in (err.value.message or "")
        assert server.echo.finished == 0
        # the connection stays usable
        assert (await EchoServiceStub(ch).echo(EchoRequest(message="ok"))).message == "ok"


async def test_oversized_message_grpclib_and_grpcio(pb2) -> None:
    server = EchoServer(settings(GRPC_MAX_MESSAGE_LENGTH=LIMIT))
    payload = b"x" * (LIMIT + 1)
    async with running(server), channel(server) as ch:
        with pytest.raises(GRPCError) as err:
            await EchoServiceStub(ch).echo(EchoRequest(payload=payload))
        assert err.value.status is Status.RESOURCE_EXHAUSTED
        # just under the limit passes
        ok = await EchoServiceStub(ch).echo(EchoRequest(payload=b"x" * (LIMIT - 16)))
        assert ok.payload_size == LIMIT - 16
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as gch:
            stub = pb2.echo_grpc.EchoServiceStub(gch)
            with pytest.raises(grpc.aio.AioRpcError) as gerr:
                await stub.Echo(pb2.echo.EchoRequest(payload=payload), timeout=5)
            assert gerr.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            # client streaming: the second, oversized message is refused
            with pytest.raises(grpc.aio.AioRpcError) as serr:
                await stub.Collect(
                    iter(
                        [pb2.echo.EchoRequest(message="a"), pb2.echo.EchoRequest(payload=payload)]
                    ),
                    timeout=5,
                )
            assert serr.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_settings_frame_advertises_streams_and_window() -> None:
    server = EchoServer(
        settings(GRPC_MAX_CONCURRENT_STREAMS=7, GRPC_HTTP2_STREAM_WINDOW_SIZE=1 << 20)
    )
    async with running(server):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        conn = h2.connection.H2Connection()
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        await writer.drain()
        changed: dict[int, int] = {}
        while SettingCodes.MAX_CONCURRENT_STREAMS not in changed:
            data = await asyncio.wait_for(reader.read(65536), 5)
            assert data, "server closed the connection"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RemoteSettingsChanged):
                    changed.update({k: v.new_value for k, v in event.changed_settings.items()})
        writer.close()
        assert changed[SettingCodes.MAX_CONCURRENT_STREAMS] == 7
        assert changed[SettingCodes.INITIAL_WINDOW_SIZE] == 1 << 20


async def test_unknown_method_is_unimplemented_for_both_clients(pb2) -> None:
    server = EchoServer(settings())
    async with running(server), channel(server) as ch:
        with pytest.raises(GRPCError) as err:
            async with ch.request(
                "/echo.v1.EchoService/Nope", Cardinality.UNARY_UNARY, EchoRequest, EchoRequest
            ) as stream:
                await stream.send_message(EchoRequest(), end=True)
                await stream.recv_message()
        assert err.value.status is Status.UNIMPLEMENTED
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as gch:
            call = gch.unary_unary("/no.Such/Method")
            with pytest.raises(grpc.aio.AioRpcError) as gerr:
                await call(b"", timeout=5)
            assert gerr.value.code() is grpc.StatusCode.UNIMPLEMENTED


async def test_undecodable_request_is_invalid_argument(pb2) -> None:
    server = EchoServer(settings())
    async with running(server):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as gch:
            raw = gch.unary_unary("/echo.v1.EchoService/Echo")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await raw(b"\x0a\xff\xff\xff", timeout=5)  # field 1, length past the end
            assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert server.echo.finished == 0


async def test_deadline_exceeded_in_handler(pb2) -> None:
    """The handler sleeps 30 s: the server must end both calls at their deadline, count them
    DeadlineExceeded and cancel the handlers (nothing left in flight long before 30 s)."""
    server = EchoServer(settings())
    async with running(server), channel(server) as ch:
        before = handled(server, ECHO_SERVICE)
        # grpclib's client enforces its own deadline too and raises TimeoutError
        with pytest.raises(asyncio.TimeoutError):
            await EchoServiceStub(ch).echo(EchoRequest(sleep_seconds=30), timeout=0.5)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as gch:
            stub = pb2.echo_grpc.EchoServiceStub(gch)
            with pytest.raises(grpc.aio.AioRpcError) as gerr:
                await stub.Echo(pb2.echo.EchoRequest(sleep_seconds=30), timeout=0.5)
            assert gerr.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        await server_counted(server, ECHO_SERVICE, before, {("Echo", "DeadlineExceeded"): 2})
        assert server.echo.finished == 0
        await eventually(lambda: not server.grpc_server.inflight)


# expired by the time the server reads the headers (100u: expiring just then)
EXPIRED = ["1n", "1u", "100u"]


async def _deadline_call(server: EchoServer, timeout: str) -> dict[str, str]:
    return await raw_h2(
        server.port,
        [*GRPC_HEADERS.items(), ("grpc-timeout", timeout)],
        grpc_frame(bytes(EchoRequest(sleep_seconds=30))),
    )


@pytest.mark.parametrize("timeout", [*EXPIRED, "1m", "300m"])
async def test_server_answers_deadline_exceeded_itself(timeout: str) -> None:
    """A raw HTTP/2 client with no timer of its own: whatever status arrives, the server sent it.
    The handler sleeps 30 s; the client waits 10 s for the server's answer."""
    server = EchoServer(settings())
    async with running(server):
        seen = await _deadline_call(server, timeout)
        assert seen[":status"] == "200"
        assert seen["grpc-status"] == str(Status.DEADLINE_EXCEEDED.value), seen
        await eventually(lambda: not server.grpc_server.inflight)
        assert server.echo.finished == 0


async def test_grpcio_1ms_deadlines_are_never_internal(pb2: Any) -> None:
    """grpcio sends what remains of a 1 ms deadline, often already expired when the server reads
    it. The server used to answer those UNKNOWN "Internal Server Error" (grpcio: INTERNAL)."""
    server = EchoServer(settings())
    async with running(server):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as gch:
            stub = pb2.echo_grpc.EchoServiceStub(gch)
            await stub.Echo(pb2.echo.EchoRequest(message="warm"), timeout=10)
            codes = []
            for _ in range(20):
                try:
                    await stub.Echo(pb2.echo.EchoRequest(sleep_seconds=30), timeout=0.001)
                    codes.append(grpc.StatusCode.OK)
                except grpc.aio.AioRpcError as err:
                    codes.append(err.code())
        assert set(codes) == {grpc.StatusCode.DEADLINE_EXCEEDED}, codes
        await eventually(lambda: not server.grpc_server.inflight)
        counted = handled(server, ECHO_SERVICE)
        assert set(counted) <= {("Echo", "OK"), ("Echo", "DeadlineExceeded")}, counted


@pytest.mark.parametrize("timeout", [*EXPIRED, "1m", "300m"])
async def test_server_counts_the_deadline_it_answered(timeout: str) -> None:
    server = EchoServer(settings())
    async with running(server):
        before = handled(server, ECHO_SERVICE)
        await _deadline_call(server, timeout)
        expected = {("Echo", "DeadlineExceeded"): 1}
        # the trailers have arrived: the count follows within a few loop turns
        await server_counted(server, ECHO_SERVICE, before, expected, timeout=2)


async def test_oversized_response_is_resource_exhausted(pb2) -> None:
    server = EchoServer(settings(GRPC_MAX_SEND_MESSAGE_LENGTH=1000))
    async with running(server), channel(server) as ch:
        # Echo answers with the request's text: 2000 bytes, over the 1000-byte send limit
        with pytest.raises(GRPCError) as err:
            await EchoServiceStub(ch).echo(EchoRequest(message="x" * 2000))
        assert err.value.status is Status.RESOURCE_EXHAUSTED
        assert "Sent message larger than max" in (err.value.message or "")
        assert (await EchoServiceStub(ch).echo(EchoRequest(message="small"))).message == "small"


@pytest.mark.parametrize(
    ("override", "http_status", "grpc_status"),
    [
        ({"grpc-timeout": "soon"}, "200", Status.INVALID_ARGUMENT),
        ({"content-type": "application/json"}, "415", Status.UNKNOWN),
        ({":method": "GET"}, "405", Status.UNKNOWN),
        ({":path": "/echo.v1.EchoService/Nope"}, "200", Status.UNIMPLEMENTED),
        ({"grpc-encoding": "snappy"}, "200", Status.UNIMPLEMENTED),
    ],
    ids=["bad-timeout", "not-grpc", "get", "unknown-method", "unknown-encoding"],
)
async def test_malformed_requests_get_a_status_not_a_hang(
    override: dict[str, str], http_status: str, grpc_status: Status
) -> None:
    server = EchoServer(settings())
    headers = dict(GRPC_HEADERS)
    headers.update(override)
    async with running(server):
        seen = await raw_h2(server.port, list(headers.items()), b"\x00\x00\x00\x00\x00")
        assert seen[":status"] == http_status
        assert seen["grpc-status"] == str(grpc_status.value)
        assert server.echo.finished == 0
        if override.get("grpc-encoding"):
            assert seen["grpc-accept-encoding"] == "gzip,identity"
