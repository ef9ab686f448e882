"""A served @cached method for the two-server-process race test (`grpcstack serve
cached_app:RaceServer`). Echo answers with the Redis key "source", read first like a database
query, and holds that answer while the key "hold" exists; Collect is the writer's RPC and
invalidates Echo."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from gen.echo.v1 import EchoRequest, EchoResponse, EchoServiceBase
from grpcstack import AsyncBaseServer
from grpcstack.cache import cached

SOURCE_DB = 5


class RaceService(EchoServiceBase):
    def __init__(self, server: AsyncBaseServer) -> None:
        self.server = server

    @cached(ttl=300, shared=True)
    async def echo(self, message: EchoRequest) -> EchoResponse:
        redis = self.server.resources.redis(SOURCE_DB)
        value = (await redis.get("source") or b"").decode()
        await redis.incr("loads")
        async with asyncio.timeout(30):  # bounded: the test removes "hold"
            while await redis.exists("hold"):
                await asyncio.sleep(0.02)
        return EchoResponse(message=value)

    async def collect(self, messages: AsyncIterator[EchoRequest]) -> EchoResponse:
        async for _ in messages:
            pass
        assert self.server.cache is not None
        await self.server.cache.invalidate_method(self.echo)
        return EchoResponse(message="invalidated")


class RaceServer(AsyncBaseServer):
    def services(self) -> list[Any]:
        return [RaceService(self)]
