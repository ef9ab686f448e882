"""ErrorHandling maps handler exceptions to statuses; the parts tests/test_middleware.py does
not cover: PermissionError, FileNotFoundError, NotImplementedError, ``register()``, and the real
Redis and MongoDB client errors (raised by redis-py and PyMongo against a port nobody listens on)
becoming UNAVAILABLE. Each status is checked as the client saw it AND as the server counted it."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from conftest import channel, running, settings
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from server_metrics import handled, server_counted

from gen.echo.v1 import EchoRequest, EchoResponse, EchoServiceBase, EchoServiceStub
from grpcstack import AsyncBaseServer
from grpcstack.middleware import ErrorHandlingMiddleware, Middleware

SERVICE = "echo.v1.EchoService"


class QuotaExceeded(Exception):
    """A service's own exception, registered on the middleware."""


def dead_port() -> int:
    """A port that refuses connections: bound, never listened on, held for the test."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    DEAD.append(sock)
    return int(sock.getsockname()[1])


DEAD: list[socket.socket] = []


async def redis_down() -> None:
    import redis.asyncio as redis

    client = redis.Redis(port=dead_port(), socket_connect_timeout=1)
    try:
        await client.get("k")
    finally:
        await client.aclose()


async def mongo_down() -> None:
    from pymongo import AsyncMongoClient

    client: AsyncMongoClient[Any] = AsyncMongoClient(
        f"mongodb://127.0.0.1:{dead_port()}", serverSelectionTimeoutMS=300, connectTimeoutMS=300
    )
    try:
        await client.db.things.find_one({})
    finally:
        await client.close()


async def raise_(exc: BaseException) -> None:
    raise exc


RAISERS: dict[str, Callable[[], Awaitable[None]]] = {
    "PermissionError": lambda: raise_(PermissionError("/secret is not yours")),
    "FileNotFoundError": lambda: raise_(FileNotFoundError("/data/missing.png")),
    "NotImplementedError": lambda: raise_(NotImplementedError("later")),
    "QuotaExceeded": lambda: raise_(QuotaExceeded("3 of 3 used")),
    "redis": redis_down,
    "mongo": mongo_down,
}


class Raising(EchoServiceBase):
    async def echo(self, message: EchoRequest) -> EchoResponse:
        await RAISERS[message.fail_with]()
        return EchoResponse()


class RaisingServer(AsyncBaseServer):
    def services(self) -> list[Any]:
        return [Raising()]

    def middlewares(self) -> list[Middleware]:
        chain = super().middlewares()
        errors = chain[-1]
        assert isinstance(errors, ErrorHandlingMiddleware)
        errors.register(QuotaExceeded, Status.ABORTED)  # as the README shows
        return chain


@pytest.mark.parametrize(
    ("fail_with", "status", "message"),
    [
        ("PermissionError", Status.PERMISSION_DENIED, "permission denied"),
        ("FileNotFoundError", Status.NOT_FOUND, "not found"),
        ("NotImplementedError", Status.UNIMPLEMENTED, "not implemented"),
        ("QuotaExceeded", Status.ABORTED, "3 of 3 used"),
        ("redis", Status.UNAVAILABLE, "Redis is unavailable, retry later"),
        ("mongo", Status.UNAVAILABLE, "MongoDB is unavailable, retry later"),
    ],
)
async def test_exception_becomes_status(fail_with: str, status: Status, message: str) -> None:
    server = RaisingServer(settings())
    try:
        async with running(server), channel(server) as ch:
            before = handled(server, SERVICE)
            with pytest.raises(GRPCError) as err:
                await EchoServiceStub(ch).echo(EchoRequest(fail_with=fail_with), timeout=30)
            assert err.value.status is status
            assert err.value.message == message  # fixed texts: no path or host leaks out
            code = {
                Status.PERMISSION_DENIED: "PermissionDenied",
                Status.NOT_FOUND: "NotFound",
                Status.UNIMPLEMENTED: "Unimplemented",
                Status.ABORTED: "Aborted",
                Status.UNAVAILABLE: "Unavailable",
            }[status]
            await server_counted(server, SERVICE, before, {("Echo", code): 1})
    finally:
        while DEAD:
            DEAD.pop().close()
