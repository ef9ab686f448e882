"""The grpclib internals grpcstack replaces (grpcstack/_compat/) are still where we hook them.

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
import pytest
from conftest import channel, running, settings
from grpclib.const import Cardinality

from gen.echo.v1 import EchoRequest, EchoResponse, EchoServiceStub
from grpcstack import _compat
from grpcstack.codec import StackCodec
from platform_services.echo import EchoServer


def test_grpclib_version_is_the_pinned_one() -> None:
    assert grpclib.__version__ == _compat.GRPCLIB_VERSION, (
        "grpclib changed: re-check grpcstack/_compat/ and grpcstack/transport/ against the "
        "new request_handler, "
        "Handler, H2Protocol and Stream, then update GRPCLIB_VERSION and the pin"
    )


def test_hyperframe_flags_cache_matches_hyperframe() -> None:
    """The per-class cache of valid flag names (_compat.cache_frame_flag_names) replaces
    hyperframe's Flags.__init__: pinned to the version it was written against, and equal to
    what hyperframe computes for every frame class."""
    import hyperframe
    import hyperframe.flags
    import hyperframe.frame

    assert hyperframe.__version__ == _compat.HYPERFRAME_VERSION, (
        "hyperframe changed: re-check _compat._cached_flags_init against the new Flags.__init__ "
        "(attributes _valid_flags and _flags), then update HYPERFRAME_VERSION"
    )
    assert _compat.cache_frame_flag_names()
    assert hyperframe.flags.Flags.__init__ is _compat._cached_flags_init
    flags = hyperframe.flags.Flags([])
    assert set(vars(flags)) == {"_valid_flags", "_flags"}
    classes = [*hyperframe.frame.FRAMES.values(), hyperframe.frame.ExtensionFrame]
    for cls in classes:
        names = {flag.name for flag in cls.defined_flags}
        for _ in range(2):  # built once, then from the cache
            sid = 0 if cls.stream_association == "no-stream" else 1
            frame = cls(0x20, sid) if cls is hyperframe.frame.ExtensionFrame else cls(sid)
            assert frame.flags._valid_flags == names, cls
            assert not frame.flags
            for name in names:
                frame.flags.add(name)
            assert set(frame.flags) == names
            with pytest.raises(ValueError):
                frame.flags.add("NOT_A_FLAG")
    headers = hyperframe.frame.HeadersFrame(1, b"x", flags=["END_STREAM", "END_HEADERS"])
    parsed, _ = hyperframe.frame.Frame.parse_frame_header(headers.serialize()[:9])
    parsed.parse_body(memoryview(headers.serialize()[9:]))
    assert set(parsed.flags) == {"END_STREAM", "END_HEADERS"}


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
