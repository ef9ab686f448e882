"""@cached on a served method (issue 14): loads hold concurrency slots, a hung MongoDB fails the
call instead of pinning the key, negative caching by final status, invalidation validated, tiers
and key material, metrics per tier."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from calls import call
from conftest import running, settings
from grpclib.const import Status

from gen.echo.v1 import EchoRequest, EchoResponse, EchoServiceBase
from grpcstack import AsyncBaseServer
from grpcstack.cache import UnknownCachedMethod, cached
from grpcstack.middleware import ConcurrencyLimitMiddleware, ErrorHandlingMiddleware
from grpcstack.middleware.base import Middleware

ECHO = "/echo.v1.EchoService/Echo"


class Missing(LookupError):
    """An application error the server maps to NOT_FOUND."""


class GatedService(EchoServiceBase):
    def __init__(self) -> None:
        self.loads = 0
        self.gate = asyncio.Event()

    @cached(ttl=60, shared=True)
    async def echo(self, message: EchoRequest) -> EchoResponse:
        self.loads += 1
        if message.message == "slow":
            await self.gate.wait()
        if message.message == "key-error":
            raise KeyError(message.message)
        if message.message == "missing":
            raise Missing("no such strategy")
        if message.message == "invalid":
            raise ValueError("bad request")
        return EchoResponse(message=message.message)


class GatedServer(AsyncBaseServer):
    def services(self) -> list[Any]:
        self.svc = GatedService()
        return [self.svc]

    def middlewares(self) -> list[Middleware]:
        chain = super().middlewares()
        for middleware in chain:
            if isinstance(middleware, ErrorHandlingMiddleware):
                middleware.register(Missing, Status.NOT_FOUND)
        return chain


def concurrency(server: AsyncBaseServer) -> ConcurrencyLimitMiddleware:
    assert server.chain is not None
    return next(m for m in server.chain.middlewares if isinstance(m, ConcurrencyLimitMiddleware))


async def test_a_load_holds_a_concurrency_slot_after_its_caller_left() -> None:
    server = GatedServer(
        settings(GRPC_MAX_CONCURRENT_RPCS=1, GRPC_CACHE_FINISH_ORPHANED_LOADS=True)
    )
    async with running(server):
        with pytest.raises(TimeoutError):  # grpclib's client raises at its own deadline
            await call("grpclib", server.port, "Echo", EchoRequest(message="slow"), timeout=0.5)
        busy = await call("grpclib", server.port, "Echo", EchoRequest(message="fast"))
        assert busy.status is Status.RESOURCE_EXHAUSTED  # the load still runs, and counts
        server.svc.gate.set()
        async with asyncio.timeout(10):
            while concurrency(server).in_flight:
                await asyncio.sleep(0.02)
        for text in ("fast", "slow"):
            out = await call("grpclib", server.port, "Echo", EchoRequest(message=text))
            assert out.status is Status.OK and out.responses[0].message == text
        assert server.svc.loads == 2  # "slow" was finished for the cache by the orphaned load


async def test_an_abandoned_load_is_cancelled_and_frees_its_slot() -> None:
    server = GatedServer(settings(GRPC_MAX_CONCURRENT_RPCS=1))
    async with running(server):
        with pytest.raises(TimeoutError):  # grpclib's client raises at its own deadline
            await call("grpclib", server.port, "Echo", EchoRequest(message="slow"), timeout=0.5)
        async with asyncio.timeout(10):
            while concurrency(server).in_flight:
                await asyncio.sleep(0.02)
        server.svc.gate.set()
        out = await call("grpclib", server.port, "Echo", EchoRequest(message="slow"))
        assert out.status is Status.OK and server.svc.loads == 2  # loaded again, not pinned


@pytest.mark.parametrize(
    ("text", "message"), [("key-error", "not found"), ("missing", "no such strategy")]
)
async def test_negative_caching_follows_the_final_status(text: str, message: str) -> None:
    server = GatedServer(settings())
    async with running(server):
        for _ in range(2):
            out = await call("grpclib", server.port, "Echo", EchoRequest(message=text))
            assert (out.status, out.message) == (Status.NOT_FOUND, message)
        assert server.svc.loads == 1  # the second answer came from the negative entry
        for _ in range(2):  # a status other than NOT_FOUND is never cached
            out = await call("grpclib", server.port, "Echo", EchoRequest(message="invalid"))
            assert (out.status, out.message) == (Status.INVALID_ARGUMENT, "bad request")
        assert server.svc.loads == 3


async def test_invalidation_names_a_served_method_or_raises() -> None:
    server = GatedServer(settings())
    async with running(server):
        assert server.cache is not None
        for wrong in ("GetItem", "Echo", "/echo.v1.EchoService/Ech0", "/other.v1.Svc/Echo"):
            with pytest.raises(UnknownCachedMethod, match=ECHO):  # the message lists the known
                await server.cache.invalidate_method(wrong)
            with pytest.raises(UnknownCachedMethod):
                await server.cache.invalidate_request(wrong, EchoRequest(message="a"))
        with pytest.raises(UnknownCachedMethod):  # a method that is not @cached
            await server.cache.invalidate_method(server.svc.collect)
        await call("grpclib", server.port, "Echo", EchoRequest(message="a"))
        result = await server.cache.invalidate_method(server.svc.echo)  # the bound method
        assert result["generation"] == 1
        await server.cache.invalidate_request(server.svc.echo, EchoRequest(message="a"))
        await call("grpclib", server.port, "Echo", EchoRequest(message="a"))
        assert server.svc.loads == 2


async def test_a_hung_mongodb_fails_the_call_and_does_not_pin_the_key(
    mongo_process: Any,
) -> None:
    from test_cache_server import KvServer, kv_settings

    server = KvServer(kv_settings(mongo_process, MONGO_SOCKET_TIMEOUT_MS=500))
    async with running(server):
        await server.kv.db.kv.replace_one({"_id": "a"}, {"_id": "a", "value": "alpha"}, upsert=True)
        mongo_process.pause()  # SIGSTOP: connections stay open, no answer ever comes
        try:
            hung = await call("grpclib", server.port, "Echo", EchoRequest(message="a"), timeout=20)
            # the socket timeout fails the query long before the client's own deadline
            assert hung.status is Status.UNAVAILABLE
            assert hung.message == "MongoDB is unavailable, retry later"
        finally:
            mongo_process.resume()
        async with asyncio.timeout(20):  # the pool reconnects; the key was never pinned
            while (
                out := await call("grpclib", server.port, "Echo", EchoRequest(message="a"))
            ).status is not Status.OK:
                await asyncio.sleep(0.1)
        assert out.responses[0].message == "alpha"


async def test_without_error_handling_only_a_grpc_not_found_is_cached() -> None:
    server = GatedServer(settings(GRPC_ENABLE_ERROR_HANDLING=False))
    async with running(server):
        for _ in range(2):
            out = await call("grpclib", server.port, "Echo", EchoRequest(message="key-error"))
            assert out.status is not Status.NOT_FOUND  # nothing maps KeyError here
        assert server.svc.loads == 2  # so nothing was cached


@pytest.mark.parametrize("broadcast", ["delivered", "lost"])
async def test_two_server_processes_racing_a_load_and_an_invalidation_end_fresh(
    redis_process: Any, broadcast: str
) -> None:
    from cli_process import start_cli
    from redis.asyncio import Redis

    env = {"REDIS_URL": redis_process.url, "GRPC_ENABLE_RATE_LIMITING": "false"}
    source = Redis.from_url(redis_process.url, db=5)
    cache_db = Redis.from_url(redis_process.url, db=2)
    procs: list[Any] = []
    try:
        for _ in range(2):  # appended one by one: a failed second start still stops the first
            procs.append(await start_cli("cached_app:RaceServer", env=env))
        (_, reader), (_, writer) = procs
        await source.set("source", "old")
        await source.set("hold", 1)
        load = asyncio.create_task(call("grpclib", reader, "Echo", EchoRequest(message="k")))
        async with asyncio.timeout(30):  # the reader's load has read "old" and holds it
            while await source.get("loads") != b"1":
                await asyncio.sleep(0.02)
        await source.set("source", "new")  # the write, then its invalidation, in the writer
        if broadcast == "delivered":
            out = await call("grpclib", writer, "Collect", EchoRequest())
            assert out.responses[0].message == "invalidated"
        else:  # the generation moves but no message reaches the reader: only Redis can refuse
            gen_key = "grpcstack:cache:grpc-service:{echo.v1.EchoService/Echo}:gen"
            assert await cache_db.incr(gen_key) == 1
        await source.delete("hold")
        assert (await load).responses[0].message == "old"  # its caller got its answer
        for port in (reader, writer, reader):  # and then every process reads the new value
            out = await call("grpclib", port, "Echo", EchoRequest(message="k"))
            assert out.status is Status.OK and out.responses[0].message == "new"
        assert await source.get("loads") == b"2"  # one reload; the stale answer was not kept
    finally:
        await source.aclose()
        await cache_db.aclose()
        for proc, _ in procs:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 15)


async def test_a_hit_goes_out_as_stored_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Serving the cached RPC itself, a hit is never decoded (nor encoded again): the stored
    bytes are the response."""
    from grpcstack.cache import decorator

    decoded: list[type] = []
    real = decorator.decode

    def watching(cls: type, data: bytes) -> Any:
        decoded.append(cls)
        return real(cls, data)

    monkeypatch.setattr(decorator, "decode", watching)
    server = GatedServer(settings())
    async with running(server):
        outs = [
            await call("grpclib", server.port, "Echo", EchoRequest(message="hit")) for _ in "abc"
        ]
        assert [(o.status, o.responses[0].message) for o in outs] == [(Status.OK, "hit")] * 3
        assert server.svc.loads == 1 and decoded == []
        # called in process (not serving this RPC) it decodes, to hand back a message
        assert (await server.svc.echo(EchoRequest(message="hit"))).message == "hit"
        assert decoded == [EchoResponse]
