"""Smaller findings of the same review: response types, on_done, stop before start, gzip."""

from __future__ import annotations

import gzip

import pytest
from conftest import settings

from gen.echo.v1 import EchoRequest, EchoResponse
from grpcstack.codec import StackCodec
from grpcstack.compression import gzip_decompress
from grpcstack.middleware import Middleware, MiddlewareChain
from platform_services.echo import EchoServer


def test_response_type_is_checked_on_every_encode() -> None:
    codec = StackCodec("plan")
    codec.encode(EchoRequest(message="x"), EchoRequest)  # EchoRequest's encoder is now cached
    with pytest.raises(TypeError, match="response must be"):
        codec.encode(EchoRequest(message="x"), EchoResponse)


def test_async_on_done_is_rejected_when_the_chain_is_built() -> None:
    class Late(Middleware):
        async def on_done(self, call):  # type: ignore[no-untyped-def,override]
            pass

    with pytest.raises(TypeError, match="on_done must be a plain def"):
        MiddlewareChain([Late()])


async def test_stop_before_start_keeps_nothing() -> None:
    server = EchoServer(settings())
    with pytest.raises(RuntimeError, match="not started"):
        await server.stop()
    assert server._stop_task is None


def test_gzip_with_two_members_decodes_both() -> None:
    data = gzip.compress(b"hello ") + gzip.compress(b"world")
    assert gzip_decompress(data, 100) == b"hello world"
    from grpcstack.compression import TooLarge

    with pytest.raises(TooLarge):
        gzip_decompress(data, 8)
