"""EchoService: every cardinality, with optional sleeps and injected failures.

The platform's diagnostic service: the stack's own tests, benchmarks (`make bench-middleware`)
and failure drills use it. ``EchoServer`` serves it alone and records its lifecycle hooks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from gen.echo.v1 import EchoRequest, EchoResponse, EchoServiceBase
from grpcstack import AsyncBaseServer

ERRORS: dict[str, type[Exception]] = {
    "ValueError": ValueError,
    "KeyError": KeyError,
    "RuntimeError": RuntimeError,
    "TimeoutError": TimeoutError,
}


async def _act(request: EchoRequest) -> None:
    if request.sleep_seconds:
        await asyncio.sleep(request.sleep_seconds)
    if request.fail_with.startswith("GRPCError:"):
        code = int(request.fail_with.split(":", 1)[1])
        raise GRPCError(Status(code), f"failing as asked with {Status(code).name}")
    if request.fail_with:
        raise ERRORS[request.fail_with](f"failing as asked with {request.fail_with}")


class EchoService(EchoServiceBase):
    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.finished = 0

    async def echo(self, message: EchoRequest) -> EchoResponse:
        self.started.set()
        await _act(message)
        self.finished += 1
        return EchoResponse(message=message.message, payload_size=len(message.payload))

    async def collect(self, messages: AsyncIterator[EchoRequest]) -> EchoResponse:
        texts = []
        size = 0
        async for message in messages:
            await _act(message)
            texts.append(message.message)
            size += len(message.payload)
        return EchoResponse(message=",".join(texts), index=len(texts), payload_size=size)

    async def expand(self, message: EchoRequest) -> AsyncIterator[EchoResponse]:
        for i in range(message.count):
            yield EchoResponse(message=message.message, index=i)
        await _act(message)

    async def chat(self, messages: AsyncIterator[EchoRequest]) -> AsyncIterator[EchoResponse]:
        i = 0
        async for message in messages:
            await _act(message)
            yield EchoResponse(message=message.message, index=i)
            i += 1


class EchoServer(AsyncBaseServer):
    """Serves EchoService and records the order of its lifecycle hooks."""

    def __init__(self, *args: Any, fail_in: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.echo = EchoService()
        self.calls: list[str] = []
        self.fail_in = fail_in

    def services(self) -> list[Any]:
        self.calls.append("services")
        return [self.echo]

    async def _hook(self, name: str) -> None:
        self.calls.append(name)
        if self.fail_in == name:
            raise RuntimeError(f"{name} failed")

    async def before_start(self) -> None:
        await self._hook("before_start")

    async def after_start(self) -> None:
        await self._hook("after_start")

    async def before_stop(self) -> None:
        await self._hook("before_stop")

    async def after_stop(self) -> None:
        await self._hook("after_stop")
