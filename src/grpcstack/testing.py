"""Helpers for tests of services built on grpcstack (pytest-asyncio or plain asyncio)::

async def test_my_service():
    async with serve(MyServer(MySettings(GRPC_ENABLE_AUTH=False))) as server:
        async with channel(server) as ch:
            reply = await MyServiceStub(ch).get_thing(GetThingRequest(id="1"))
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from grpclib.client import Channel
from grpclib.encoding.proto import ProtoStatusDetailsCodec

from .codec import StackCodec
from .server import AsyncBaseServer


def bound_socket(host: str = "127.0.0.1") -> socket.socket:
    """A bound socket on an ephemeral port. IPPROTO_TCP matters: without it asyncio skips
    TCP_NODELAY and every sequential call waits ~40 ms for a delayed ACK."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    return sock


@asynccontextmanager
async def serve(server: AsyncBaseServer, *, grace: float = 1.0) -> AsyncIterator[AsyncBaseServer]:
    """Start ``server`` on 127.0.0.1 and an ephemeral port (and its Connect / gRPC-Web listener
    on another when GRPC_HTTP_PORT is set: ``server.http_port``); always stop it."""
    http_sock = bound_socket() if server.settings.GRPC_HTTP_PORT is not None else None
    await server.start(sock=bound_socket(), http_sock=http_sock)
    try:
        yield server
    finally:
        if server.grpc_server is not None:
            await server.stop(grace)


def make_channel(host: str, port: int, **kwargs: object) -> Channel:
    """A grpclib Channel with the stack's codec (and rich error details kept)."""
    return Channel(
        host, port, codec=StackCodec(), status_details_codec=ProtoStatusDetailsCodec(), **kwargs
    )  # type: ignore[arg-type]


@asynccontextmanager
async def channel(server: AsyncBaseServer) -> AsyncIterator[Channel]:
    """A channel to a served ``server``, closed afterwards."""
    assert server.port is not None, "start the server first"
    ch = make_channel("127.0.0.1", server.port)
    try:
        yield ch
    finally:
        ch.close()
