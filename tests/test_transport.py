"""The grpclib internals grpcstack replaces (grpcstack/_compat.py) are still where we hook them.

If a grpclib upgrade breaks one of these, this file fails first and says which hook moved.
"""

from __future__ import annotations

import inspect
import types
from typing import Any

import grpclib
import grpclib.protocol
import grpclib.server
import grpclib.utils
from conftest import channel, running, settings
from grpclib.const import Cardinality

from gen.echo.v1 import EchoRequest, EchoResponse, EchoServiceStub
from grpcstack import _compat
from grpcstack.codec import StackCodec
from platform_services.echo import EchoServer


def test_grpclib_version_is_the_pinned_one() -> None:
    assert grpclib.__version__ == _compat.GRPCLIB_VERSION, (
        "grpclib changed: re-check grpcstack/_compat.py and grpcstack/transport/ against the "
        "new request_handler, "
        "Handler, H2Protocol and Stream, then update GRPCLIB_VERSION and the pin"
    )


def test_private_hooks_exist() -> None:
    server_params = inspect.signature(grpclib.server.Server.__init__).parameters
    assert {"codec", "status_details_codec", "config"} <= set(server_params)
    assert callable(grpclib.server.Server._protocol_factory)
    handler_params = inspect.signature(grpclib.server.Handler.__init__).parameters
    assert list(handler_params)[1:] == ["mapping", "codec", "status_details_codec", "dispatch"]
    assert list(inspect.signature(grpclib.server.Handler.accept).parameters)[1:] == [
        "stream",
        "headers",
        "release_stream",
    ]
    stream_params = inspect.signature(grpclib.server.Stream.__init__).parameters
    assert {"codec", "status_details_codec", "dispatch", "deadline", "user_agent"} <= set(
        stream_params
    )
    # instance attributes: build a real server Stream and look at it (not at its source text)
    connection = types.SimpleNamespace(get_peer=lambda: None)
    stream = grpclib.server.Stream(
        types.SimpleNamespace(connection=connection),  # type: ignore[arg-type]
        "/echo.v1.EchoService/Echo",
        Cardinality.UNARY_UNARY,
        EchoRequest,
        EchoResponse,
        codec=StackCodec(),
        status_details_codec=None,
        dispatch=None,  # type: ignore[arg-type]
    )
    assert stream._messages_received == 0
    assert stream._cardinality is Cardinality.UNARY_UNARY
    assert stream._recv_type is EchoRequest
    assert hasattr(stream, "_dispatch") and hasattr(stream, "_stream")
    assert callable(grpclib.protocol._set_nodelay)
    assert callable(grpclib.server.Handler.cancel)
    for name in ("_send_initial_metadata_done", "_send_message_done", "_messages_sent"):
        assert hasattr(grpclib.server.Stream, name), name
    # the HPACK encoder hook (hpack comes with h2)
    import hpack

    assert list(inspect.signature(hpack.Encoder._encode_literal).parameters)[1:] == [
        "name",
        "value",
        "indexbit",
        "huffman",
    ]
    assert {"cancelled", "cancel_failed"} <= set(vars(grpclib.utils.Wrapper))


class CountingTransport:
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.inner.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_one_write_per_unary_response() -> None:
    server = EchoServer(settings())
    async with running(server), channel(server) as ch:
        stub = EchoServiceStub(ch)
        await stub.echo(EchoRequest(message="warm up"))
        (protocol,) = list(server.grpc_server.protocols)
        counter = CountingTransport(protocol._proxy._transport)
        protocol._proxy._transport = counter
        for i in range(20):
            assert (await stub.echo(EchoRequest(message=str(i)))).message == str(i)
        # HEADERS + DATA + trailers of each response leave in one write (grpclib alone: 3)
        assert counter.writes == 20
