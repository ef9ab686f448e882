"""Servers for the many-processes tests (workers, haproxy): every answer names the process.

``/echo.v1.EchoService/Echo``: a cached lookup answering ``"<pid>:<fresh token>"`` (a new token per
load, so a cache hit is recognisable); ``Expand``: ``count`` answers carrying the pid, after
``sleep_seconds`` (a call to keep in flight through a drain); ``Collect``: invalidates the Echo
entries of the messages it receives, and answers the pid.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

from gen.echo.v1 import EchoRequest, EchoResponse, EchoServiceBase
from grpcstack import AsyncBaseServer
from grpcstack.cache import cached

ECHO = "/echo.v1.EchoService/Echo"


class WhoEcho(EchoServiceBase):
    def __init__(self, server: AsyncBaseServer) -> None:
        self.server = server

    @cached(ttl=300)
    async def echo(self, message: EchoRequest) -> EchoResponse:
        return EchoResponse(message=f"{os.getpid()}:{uuid.uuid4().hex}")

    async def expand(self, message: EchoRequest) -> AsyncIterator[EchoResponse]:
        if message.sleep_seconds:
            await asyncio.sleep(message.sleep_seconds)
        for i in range(max(1, message.count)):
            yield EchoResponse(message=str(os.getpid()), index=i)

    async def collect(self, messages: AsyncIterator[EchoRequest]) -> EchoResponse:
        assert self.server.cache is not None
        async for message in messages:
            await self.server.cache.invalidate_request(ECHO, EchoRequest(message=message.message))
        return EchoResponse(message=str(os.getpid()))


class WhoServer(AsyncBaseServer):
    async def before_start(self) -> None:
        if os.environ.get("WHO_FAIL_START") == "1":
            raise RuntimeError("failing to start as asked (WHO_FAIL_START=1)")

    def services(self) -> list[Any]:
        return [WhoEcho(self)]
