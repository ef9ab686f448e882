"""gRPC interop cases (grpc/grpc doc/interop-test-descriptions.md) against grpcstack's interop
server, each with the official grpcio client and with the grpclib client, asserting what the
description says the client asserts AND what the server sent and counted for that case (its
``grpc_server_handled_total``), so a status the client raised by itself proves nothing alone."""

from __future__ import annotations

import asyncio
import importlib
import re
import sys
import types
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import grpclib_gzip
import pytest
import pytest_asyncio
from conftest import ROOT, bound_socket
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError
from server_metrics import handled, in_flight, server_counted
from waiting import eventually

from gen.grpc.testing import (
    BoolValue,
    EchoStatus,
    Empty,
    Payload,
    ResponseParameters,
    SimpleRequest,
    StreamingInputCallRequest,
    StreamingOutputCallRequest,
    UnimplementedServiceStub,
)
from gen.grpc.testing import (
    TestServiceStub as InteropStub,
)
from platform_services.interop import InteropServer, InteropSettings

pytestmark = pytest.mark.asyncio(loop_scope="module")

SPECIAL = "\t\ntest with whitespace\r\nand Unicode BMP \u263a and non-BMP \U0001f608\t\n"
CASES: list[str] = []


def case(fn: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    CASES.append(fn.__name__.removeprefix("grpcio_"))
    return fn


@pytest.fixture(scope="module")
def ipb(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """grpcio stubs for grpc.testing, compiled from protos/ under flat names (a generated
    ``grpc.testing`` package would shadow grpcio itself)."""
    from grpc_tools import protoc

    stage = tmp_path_factory.mktemp("interop")
    for name in ("empty", "messages", "test"):
        text = (ROOT / "protos" / "grpc" / "testing" / f"{name}.proto").read_text()
        text = re.sub(r'import "grpc/testing/(\w+)\.proto"', r'import "interop_\1.proto"', text)
        (stage / f"interop_{name}.proto").write_text(text)
    assert (
        protoc.main(
            [
                "protoc",
                f"-I{stage}",
                f"--python_out={stage}",
                f"--grpc_python_out={stage}",
                "interop_empty.proto",
                "interop_messages.proto",
                "interop_test.proto",
            ]
        )
        == 0
    )
    sys.path.insert(0, str(stage))
    try:
        ns = types.SimpleNamespace(
            empty=importlib.import_module("interop_empty_pb2"),
            messages=importlib.import_module("interop_messages_pb2"),
            test=importlib.import_module("interop_test_pb2"),
            grpc=importlib.import_module("interop_test_pb2_grpc"),
        )
    finally:
        sys.path.remove(str(stage))
    return ns


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server() -> AsyncIterator[InteropServer]:
    srv = InteropServer(
        InteropSettings(_env_file=None, GRPC_SERVER_HOST="127.0.0.1", GRPC_SERVER_PORT=0)
    )
    await srv.start(sock=bound_socket())
    try:
        yield srv
    finally:
        await srv.stop(1)


# --- the official grpcio client -------------------------------------------------------------


def stubs(ch: grpc.aio.Channel, ipb: Any) -> tuple[Any, Any]:
    return ipb.grpc.TestServiceStub(ch), ipb.grpc.UnimplementedServiceStub(ch)


@case
async def grpcio_empty_unary(stub: Any, m: Any, ipb: Any, server: InteropServer) -> None:
    assert await stub.EmptyCall(ipb.empty.Empty()) == ipb.empty.Empty()


@case
async def grpcio_large_unary(stub: Any, m: Any, ipb: Any, server: InteropServer) -> None:
    reply = await stub.UnaryCall(
        m.SimpleRequest(response_size=314159, payload=m.Payload(body=bytes(271828)))
    )
    assert reply.payload.body == bytes(314159)


@case
async def grpcio_client_compressed_unary(
    stub: Any, m: Any, ipb: Any, server: InteropServer
) -> None:
    def req(expect: bool) -> Any:
        return m.SimpleRequest(
            response_size=314159,
            payload=m.Payload(body=bytes(271828)),
            expect_compressed=m.BoolValue(value=expect),
        )

    with pytest.raises(grpc.aio.AioRpcError) as probe:  # the feature probe must fail
        await stub.UnaryCall(req(True))
    assert probe.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    reply = await stub.UnaryCall(req(True), compression=grpc.Compression.Gzip)
    assert len(reply.payload.body) == 314159
    reply = await stub.UnaryCall(req(False))
    assert len(reply.payload.body) == 314159


@case
async def grpcio_server_compressed_unary(
    stub: Any, m: Any, ipb: Any, server: InteropServer
) -> None:
    for compressed in (True, False):
        reply = await stub.UnaryCall(
            m.SimpleRequest(
                response_size=314159,
                payload=m.Payload(body=bytes(271828)),
                response_compressed=m.BoolValue(value=compressed),
            )
        )
        assert reply.payload.body == bytes(314159)


@case
async def grpcio_client_streaming(stub: Any, m: Any, ipb: Any, server: InteropServer) -> None:
    sizes = [27182, 8, 1828, 45904]
    reply = await stub.StreamingInputCall(
        iter([m.StreamingInputCallRequest(payload=m.Payload(body=bytes(n))) for n in sizes])
    )
    assert reply.aggregated_payload_size == 74922


@case
async def grpcio_client_compressed_streaming(
    stub: Any, m: Any, ipb: Any, server: InteropServer
) -> None:
    call = stub.StreamingInputCall()
    await call.write(
        m.StreamingInputCallRequest(
            payload=m.Payload(body=bytes(27182)), expect_compressed=m.BoolValue(value=True)
        )
    )
    await call.done_writing()
    with pytest.raises(grpc.aio.AioRpcError) as probe:
        await call
    assert probe.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    # grpcio cannot switch compression off for one message: both go compressed
    reply = await stub.StreamingInputCall(
        iter(
            [
                m.StreamingInputCallRequest(
                    payload=m.Payload(body=bytes(27182)), expect_compressed=m.BoolValue(value=True)
                ),
                m.StreamingInputCallRequest(
                    payload=m.Payload(body=bytes(45904)), expect_compressed=m.BoolValue(value=False)
                ),
            ]
        ),
        compression=grpc.Compression.Gzip,
    )
    assert reply.aggregated_payload_size == 73086


@case
async def grpcio_server_streaming(stub: Any, m: Any, ipb: Any, server: InteropServer) -> None:
    sizes = [31415, 9, 2653, 58979]
    replies = [
        r
        async for r in stub.StreamingOutputCall(
            m.StreamingOutputCallRequest(
                response_parameters=[m.ResponseParameters(size=n) for n in sizes]
            )
        )
    ]
    assert [len(r.payload.body) for r in replies] == sizes


@case
async def grpcio_server_compressed_streaming(
    stub: Any, m: Any, ipb: Any, server: InteropServer
) -> None:
    replies = [
        r
        async for r in stub.StreamingOutputCall(
            m.StreamingOutputCallRequest(
                response_parameters=[
                    m.ResponseParameters(size=31415, compressed=m.BoolValue(value=True)),
                    m.ResponseParameters(size=92653, compressed=m.BoolValue(value=False)),
                ]
            )
        )
    ]
    assert [len(r.payload.body) for r in replies] == [31415, 92653]


@case
async def grpcio_ping_pong(stub: Any, m: Any, ipb: Any, server: InteropServer) -> None:
    call = stub.FullDuplexCall()
    for size, payload in [(31415, 27182), (9, 8), (2653, 1828), (58979, 45904)]:
        await call.write(
            m.StreamingOutputCallRequest(
                response_parameters=[m.ResponseParameters(size=size)],
                payload=m.Payload(body=bytes(payload)),
            )
        )
        reply = await call.read()
        assert len(reply.payload.body) == size
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF


@case
async def grpcio_empty_stream(stub: Any, m: Any, ipb: Any, server: InteropServer) -> None:
    call = stub.FullDuplexCall()
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    assert await call.code() is grpc.StatusCode.OK


@case
async def grpcio_custom_metadata(stub: Any, m: Any, ipb: Any, server: InteropServer) -> None:
    md = (
        ("x-grpc-test-echo-initial", "test_initial_metadata_value"),
        ("x-grpc-test-echo-trailing-bin", b"\xab\xab\xab"),
    )
    call = stub.UnaryCall(
        m.SimpleRequest(response_size=314159, payload=m.Payload(body=bytes(271828))), metadata=md
    )
    await call
    assert dict(await call.initial_metadata())["x-grpc-test-echo-initial"] == (
        "test_initial_metadata_value"
    )
    assert dict(await call.trailing_metadata())["x-grpc-test-echo-trailing-bin"] == b"\xab" * 3
    duplex = stub.FullDuplexCall(metadata=md)
    await duplex.write(
        m.StreamingOutputCallRequest(
            response_parameters=[m.ResponseParameters(size=314159)],
            payload=m.Payload(body=bytes(271828)),
        )
    )
    await duplex.done_writing()
    assert len((await duplex.read()).payload.body) == 314159
    assert await duplex.read() is grpc.aio.EOF
    assert dict(await duplex.initial_metadata())["x-grpc-test-echo-initial"] == (
        "test_initial_metadata_value"
    )
    assert dict(await duplex.trailing_metadata())["x-grpc-test-echo-trailing-bin"] == b"\xab" * 3


async def _grpcio_status(stub: Any, m: Any, message: str) -> None:
    status = m.EchoStatus(code=2, message=message)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.UnaryCall(m.SimpleRequest(response_status=status))
    assert err.value.code() is grpc.StatusCode.UNKNOWN and err.value.details() == message
    duplex = stub.FullDuplexCall()
    await duplex.write(m.StreamingOutputCallRequest(response_status=status))
    await duplex.done_writing()
    assert await duplex.code() is grpc.StatusCode.UNKNOWN
    assert await duplex.details() == message


@case
async def grpcio_status_code_and_message(
    stub: Any, m: Any, ipb: Any, server: InteropServer
) -> None:
    await _grpcio_status(stub, m, "test status message")


@case
async def grpcio_special_status_message(stub: Any, m: Any, ipb: Any, server: InteropServer) -> None:
    await _grpcio_status(stub, m, SPECIAL)


@case
async def grpcio_unimplemented_method(stub: Any, m: Any, ipb: Any, server: InteropServer) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.UnimplementedCall(ipb.empty.Empty())
    assert err.value.code() is grpc.StatusCode.UNIMPLEMENTED


@case
async def grpcio_unimplemented_service(stub: Any, m: Any, ipb: Any, server: InteropServer) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.unimplemented.UnimplementedCall(ipb.empty.Empty())
    assert err.value.code() is grpc.StatusCode.UNIMPLEMENTED


@case
async def grpcio_cancel_after_begin(stub: Any, m: Any, ipb: Any, server: InteropServer) -> None:
    call = stub.StreamingInputCall()
    await call.wait_for_connection()
    await eventually(lambda: in_flight(server, SERVICE) == 1)  # the server has the call
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert call.cancelled()


@case
async def grpcio_cancel_after_first_response(
    stub: Any, m: Any, ipb: Any, server: InteropServer
) -> None:
    call = stub.FullDuplexCall()
    await call.write(
        m.StreamingOutputCallRequest(
            response_parameters=[m.ResponseParameters(size=31415)],
            payload=m.Payload(body=bytes(27182)),
        )
    )
    assert len((await call.read()).payload.body) == 31415
    call.cancel()
    assert await call.code() is grpc.StatusCode.CANCELLED


@case
async def grpcio_timeout_on_sleeping_server(
    stub: Any, m: Any, ipb: Any, server: InteropServer
) -> None:
    # The description's 1 ms deadline usually expires before the call leaves the client, which
    # proves nothing about the server: the deadline here is long enough to reach the server on a
    # warm channel, and the server must count the call DeadlineExceeded.
    await stub.EmptyCall(ipb.empty.Empty())  # the connection exists
    call = stub.FullDuplexCall(timeout=SLEEPING_SERVER_TIMEOUT)
    try:
        await call.write(m.StreamingOutputCallRequest(payload=m.Payload(body=bytes(27182))))
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
        pass
    assert await call.code() is grpc.StatusCode.DEADLINE_EXCEEDED


#: what the server must count for each case: (method, Go code name) -> calls
SERVER_COUNTS: dict[str, dict[tuple[str, str], int]] = {
    "empty_unary": {("EmptyCall", "OK"): 1},
    "large_unary": {("UnaryCall", "OK"): 1},
    "client_compressed_unary": {("UnaryCall", "InvalidArgument"): 1, ("UnaryCall", "OK"): 2},
    "server_compressed_unary": {("UnaryCall", "OK"): 2},
    "client_streaming": {("StreamingInputCall", "OK"): 1},
    "client_compressed_streaming": {
        ("StreamingInputCall", "InvalidArgument"): 1,
        ("StreamingInputCall", "OK"): 1,
    },
    "server_streaming": {("StreamingOutputCall", "OK"): 1},
    "server_compressed_streaming": {("StreamingOutputCall", "OK"): 1},
    "ping_pong": {("FullDuplexCall", "OK"): 1},
    "empty_stream": {("FullDuplexCall", "OK"): 1},
    "custom_metadata": {("UnaryCall", "OK"): 1, ("FullDuplexCall", "OK"): 1},
    "status_code_and_message": {("UnaryCall", "Unknown"): 1, ("FullDuplexCall", "Unknown"): 1},
    "special_status_message": {("UnaryCall", "Unknown"): 1, ("FullDuplexCall", "Unknown"): 1},
    "unimplemented_method": {("UnimplementedCall", "Unimplemented"): 1},
    "unimplemented_service": {},  # not a served service: nothing of TestService moves
    "cancel_after_begin": {("StreamingInputCall", "Canceled"): 1},
    "cancel_after_first_response": {("FullDuplexCall", "Canceled"): 1},
    "timeout_on_sleeping_server": {
        ("EmptyCall", "OK"): 1,
        ("FullDuplexCall", "DeadlineExceeded"): 1,
    },
}
SERVICE = "grpc.testing.TestService"
#: long enough to reach the server on a warm connection on a slow machine; short enough to wait for
SLEEPING_SERVER_TIMEOUT = 1.0


@pytest.mark.parametrize("name", CASES)
async def test_grpcio_client(name: str, server: InteropServer, ipb: Any) -> None:
    before = handled(server, SERVICE)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub, unimplemented = stubs(ch, ipb)
        stub.unimplemented = unimplemented
        await asyncio.wait_for(globals()[f"grpcio_{name}"](stub, ipb.messages, ipb, server), 30)
    await server_counted(server, SERVICE, before, SERVER_COUNTS[name])


# --- the grpclib client -----------------------------------------------------------------------


async def grpclib_case(name: str, ch: Channel, server: InteropServer) -> None:
    stub = InteropStub(ch)
    big = SimpleRequest(response_size=314159, payload=Payload(body=bytes(271828)))
    if name == "empty_unary":
        assert await stub.empty_call(Empty()) == Empty()
    elif name == "large_unary":
        assert (await stub.unary_call(big)).payload.body == bytes(314159)
    elif name == "client_compressed_unary":
        req = SimpleRequest(
            response_size=314159,
            payload=Payload(body=bytes(271828)),
            expect_compressed=BoolValue(value=True),
        )
        with pytest.raises(GRPCError) as probe:
            await stub.unary_call(req)
        assert probe.value.status is Status.INVALID_ARGUMENT
        with grpclib_gzip.enabled():
            async with stub.channel.request(
                "/grpc.testing.TestService/UnaryCall",
                _UNARY,
                SimpleRequest,
                _resp("SimpleResponse"),
                metadata={"grpc-encoding": "gzip"},
            ) as st:
                await grpclib_gzip.send_compressed(st, req, end=True)
                assert len((await st.recv_message()).payload.body) == 314159
        req.expect_compressed = BoolValue(value=False)
        assert len((await stub.unary_call(req)).payload.body) == 314159
    elif name == "server_compressed_unary":
        with grpclib_gzip.enabled() as flags:
            for compressed in (True, False):
                req = SimpleRequest(
                    response_size=314159,
                    payload=Payload(body=bytes(271828)),
                    response_compressed=BoolValue(value=compressed),
                )
                reply = await stub.unary_call(req, metadata={"grpc-accept-encoding": "gzip"})
                assert reply.payload.body == bytes(314159)
            assert flags == [True, False]  # the first reply really arrived compressed
    elif name == "client_streaming":
        reply = await stub.streaming_input_call(
            [
                StreamingInputCallRequest(payload=Payload(body=bytes(n)))
                for n in (27182, 8, 1828, 45904)
            ]
        )
        assert reply.aggregated_payload_size == 74922
    elif name == "client_compressed_streaming":
        with pytest.raises(GRPCError) as probe:
            await stub.streaming_input_call(
                [
                    StreamingInputCallRequest(
                        payload=Payload(body=bytes(27182)), expect_compressed=BoolValue(value=True)
                    )
                ]
            )
        assert probe.value.status is Status.INVALID_ARGUMENT
        with grpclib_gzip.enabled():
            async with stub.channel.request(
                "/grpc.testing.TestService/StreamingInputCall",
                _CLIENT_STREAM,
                StreamingInputCallRequest,
                _resp("StreamingInputCallResponse"),
                metadata={"grpc-encoding": "gzip"},
            ) as st:
                await grpclib_gzip.send_compressed(
                    st,
                    StreamingInputCallRequest(
                        payload=Payload(body=bytes(27182)), expect_compressed=BoolValue(value=True)
                    ),
                )
                await st.send_message(
                    StreamingInputCallRequest(
                        payload=Payload(body=bytes(45904)), expect_compressed=BoolValue(value=False)
                    ),
                    end=True,
                )  # the second message goes uncompressed (flag 0)
                assert (await st.recv_message()).aggregated_payload_size == 73086
    elif name == "server_streaming":
        sizes = [31415, 9, 2653, 58979]
        replies = [
            r
            async for r in stub.streaming_output_call(
                StreamingOutputCallRequest(
                    response_parameters=[ResponseParameters(size=n) for n in sizes]
                )
            )
        ]
        assert [len(r.payload.body) for r in replies] == sizes
    elif name == "server_compressed_streaming":
        with grpclib_gzip.enabled() as flags:
            replies = [
                r
                async for r in stub.streaming_output_call(
                    StreamingOutputCallRequest(
                        response_parameters=[
                            ResponseParameters(size=31415, compressed=BoolValue(value=True)),
                            ResponseParameters(size=92653, compressed=BoolValue(value=False)),
                        ]
                    ),
                    metadata={"grpc-accept-encoding": "gzip"},
                )
            ]
            assert [len(r.payload.body) for r in replies] == [31415, 92653]
            assert flags == [True, False]
    elif name == "ping_pong":
        async with stub.channel.request(
            "/grpc.testing.TestService/FullDuplexCall",
            _BIDI,
            StreamingOutputCallRequest,
            _resp("StreamingOutputCallResponse"),
        ) as st:
            for size, payload in [(31415, 27182), (9, 8), (2653, 1828), (58979, 45904)]:
                await st.send_message(
                    StreamingOutputCallRequest(
                        response_parameters=[ResponseParameters(size=size)],
                        payload=Payload(body=bytes(payload)),
                    )
                )
                assert len((await st.recv_message()).payload.body) == size
            await st.end()
            assert await st.recv_message() is None
    elif name == "empty_stream":
        async with stub.channel.request(
            "/grpc.testing.TestService/FullDuplexCall",
            _BIDI,
            StreamingOutputCallRequest,
            _resp("StreamingOutputCallResponse"),
        ) as st:
            await st.send_request(end=True)
            assert await st.recv_message() is None
    elif name == "custom_metadata":
        md = {
            "x-grpc-test-echo-initial": "test_initial_metadata_value",
            "x-grpc-test-echo-trailing-bin": b"\xab\xab\xab",
        }
        for method, card, req_t, resp_t, req in [
            ("UnaryCall", _UNARY, SimpleRequest, "SimpleResponse", big),
            (
                "FullDuplexCall",
                _BIDI,
                StreamingOutputCallRequest,
                "StreamingOutputCallResponse",
                StreamingOutputCallRequest(
                    response_parameters=[ResponseParameters(size=314159)],
                    payload=Payload(body=bytes(271828)),
                ),
            ),
        ]:
            async with stub.channel.request(
                f"/grpc.testing.TestService/{method}", card, req_t, _resp(resp_t), metadata=md
            ) as st:
                await st.send_message(req, end=True)
                assert len((await st.recv_message()).payload.body) == 314159
                await st.recv_trailing_metadata()
            assert st.initial_metadata["x-grpc-test-echo-initial"] == "test_initial_metadata_value"
            assert st.trailing_metadata["x-grpc-test-echo-trailing-bin"] == b"\xab\xab\xab"
    elif name in ("status_code_and_message", "special_status_message"):
        message = "test status message" if name == "status_code_and_message" else SPECIAL
        with pytest.raises(GRPCError) as err:
            await stub.unary_call(
                SimpleRequest(response_status=EchoStatus(code=2, message=message))
            )
        assert (err.value.status, err.value.message) == (Status.UNKNOWN, message)
        with pytest.raises(GRPCError) as err:
            [
                r
                async for r in stub.full_duplex_call(
                    [
                        StreamingOutputCallRequest(
                            response_status=EchoStatus(code=2, message=message)
                        )
                    ]
                )
            ]
        assert (err.value.status, err.value.message) == (Status.UNKNOWN, message)
    elif name == "unimplemented_method":
        with pytest.raises(GRPCError) as err:
            await stub.unimplemented_call(Empty())
        assert err.value.status is Status.UNIMPLEMENTED
    elif name == "unimplemented_service":
        with pytest.raises(GRPCError) as err:
            await UnimplementedServiceStub(ch).unimplemented_call(Empty())
        assert err.value.status is Status.UNIMPLEMENTED
    elif name == "cancel_after_begin":
        async with stub.channel.request(
            "/grpc.testing.TestService/StreamingInputCall",
            _CLIENT_STREAM,
            StreamingInputCallRequest,
            _resp("StreamingInputCallResponse"),
        ) as st:
            await st.send_request()
            await eventually(lambda: in_flight(server, SERVICE) == 1)  # the server has the call
            await st.cancel()
    elif name == "cancel_after_first_response":
        async with stub.channel.request(
            "/grpc.testing.TestService/FullDuplexCall",
            _BIDI,
            StreamingOutputCallRequest,
            _resp("StreamingOutputCallResponse"),
        ) as st:
            await st.send_message(
                StreamingOutputCallRequest(
                    response_parameters=[ResponseParameters(size=31415)],
                    payload=Payload(body=bytes(27182)),
                )
            )
            assert len((await st.recv_message()).payload.body) == 31415
            await st.cancel()
    elif name == "timeout_on_sleeping_server":
        assert await stub.empty_call(Empty()) == Empty()  # the connection exists
        with pytest.raises((asyncio.TimeoutError, GRPCError)) as err:
            async with stub.channel.request(
                "/grpc.testing.TestService/FullDuplexCall",
                _BIDI,
                StreamingOutputCallRequest,
                _resp("StreamingOutputCallResponse"),
                timeout=SLEEPING_SERVER_TIMEOUT,
            ) as st:
                await st.send_message(
                    StreamingOutputCallRequest(payload=Payload(body=bytes(27182)))
                )
                await st.recv_message()
        # grpclib's client enforces the deadline itself (TimeoutError) or hears the server's status
        if isinstance(err.value, GRPCError):
            assert err.value.status is Status.DEADLINE_EXCEEDED
    else:
        raise AssertionError(name)


def _resp(name: str) -> Any:
    return getattr(importlib.import_module("gen.grpc.testing"), name)


_UNARY = Cardinality.UNARY_UNARY
_CLIENT_STREAM = Cardinality.STREAM_UNARY
_BIDI = Cardinality.STREAM_STREAM


@pytest.mark.parametrize("name", CASES)
async def test_grpclib_client(name: str, server: InteropServer) -> None:
    before = handled(server, SERVICE)
    ch = Channel("127.0.0.1", server.port)
    try:
        await asyncio.wait_for(grpclib_case(name, ch, server), 30)
    finally:
        ch.close()
    await server_counted(server, SERVICE, before, SERVER_COUNTS[name])


@pytest.mark.filterwarnings("ignore::pytest.PytestWarning")
def test_cases_cover_the_issue_and_the_readme() -> None:
    assert len(CASES) == 18
    readme = Path(ROOT / "README.md").read_text()
    assert all(f"| `{name}` |" in readme for name in CASES)
