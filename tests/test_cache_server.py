"""@cached on a real server with real Redis and a real MongoDB wire server: hits in metrics,
negative caching, Redis killed and restarted, MongoDB down and back."""

from __future__ import annotations

import asyncio
from typing import Any

from calls import call
from conftest import running, settings
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from gen.echo.v1 import EchoRequest, EchoResponse, EchoServiceBase
from grpcstack import AsyncBaseServer
from grpcstack.cache import cached
from grpcstack.context import current_call
from grpcstack.middleware import RateLimitMiddleware
from grpcstack.ratelimit import RedisLimiter


class KvService(EchoServiceBase):
    """Echo's unary method as a read-through lookup of MongoDB documents."""

    def __init__(self, db: Any) -> None:
        self.db = db
        self.loads = 0

    @cached(ttl=60)
    async def echo(self, message: EchoRequest) -> EchoResponse:
        self.loads += 1
        doc = await self.db.kv.find_one({"_id": message.message})
        if doc is None:
            raise GRPCError(Status.NOT_FOUND, f"no key {message.message!r}")
        return EchoResponse(message=doc["value"])


class KvServer(AsyncBaseServer):
    def services(self) -> list[Any]:
        self.kv = KvService(self.resources.mongo_db())
        return [self.kv]


def sample(server: AsyncBaseServer, name: str, labels: dict[str, str]) -> float:
    return server.metrics_registry.get_sample_value(name, labels) or 0.0


async def seed(server: KvServer, **docs: str) -> None:
    for key, value in docs.items():
        await server.kv.db.kv.replace_one({"_id": key}, {"_id": key, "value": value}, upsert=True)


async def health(server: AsyncBaseServer) -> int:
    from grpclib.client import Channel

    ch = Channel("127.0.0.1", server.port)
    try:
        return (await HealthStub(ch).Check(HealthCheckRequest())).status
    finally:
        ch.close()


async def eventually(server: AsyncBaseServer, status: int, within: float = 10.0) -> None:
    """Health reaches ``status`` (readiness checks follow the resource, not instantly)."""
    async with asyncio.timeout(within):
        while await health(server) != status:
            await asyncio.sleep(0.1)


def kv_settings(mongo: Any, **extra: Any) -> Any:
    return settings(
        MONGO_URL=mongo.url,
        MONGO_SERVER_SELECTION_TIMEOUT_MS=500,
        GRPC_HEALTH_CHECK_TIMEOUT_SECONDS=1.0,
        **extra,
    )


async def test_hits_and_negative_answers_in_metrics(mongo_process: Any, pb2: Any) -> None:
    server = KvServer(kv_settings(mongo_process))
    async with running(server):
        await seed(server, a="alpha")
        for client in ("grpclib", "grpcio", "grpclib"):
            out = await call(client, server.port, "Echo", EchoRequest(message="a"), pb2=pb2)
            assert out.status is Status.OK and out.responses[0].message == "alpha"
        assert server.kv.loads == 1
        labels = {"service": "grpc-service", "method": "/echo.v1.EchoService/Echo"}
        assert sample(server, "grpcstack_cache_lookups_total", {**labels, "result": "hit"}) == 2
        assert sample(server, "grpcstack_cache_lookups_total", {**labels, "result": "miss"}) == 1
        for _ in range(2):
            out = await call("grpclib", server.port, "Echo", EchoRequest(message="zz"))
            assert out.status is Status.NOT_FOUND and out.message == "no key 'zz'"
        assert server.kv.loads == 2  # the second NOT_FOUND came from the negative entry


async def test_redis_killed_mid_test(mongo_process: Any, redis_process: Any) -> None:
    server = KvServer(
        kv_settings(
            mongo_process,
            REDIS_URL=redis_process.url,
            GRPC_RATE_LIMIT_MAX_REQUESTS=1000,
            GRPC_RATE_LIMIT_LEASE=1,  # every call asks Redis: the limiter sees it die at once
        )
    )
    async with running(server):
        await seed(server, a="alpha", b="beta", c="gamma")
        assert (
            await call("grpclib", server.port, "Echo", EchoRequest(message="a"))
        ).status is Status.OK
        limiter = next(m for m in server.chain.middlewares if isinstance(m, RateLimitMiddleware))
        assert isinstance(limiter.limiter, RedisLimiter)
        limiter.limiter.retry_backoff = limiter.limiter._backoff = 0.2
        limiter.limiter.max_backoff = 0.2
        redis_process.stop()
        hit = await call("grpclib", server.port, "Echo", EchoRequest(message="a"))  # L1
        miss = await call("grpclib", server.port, "Echo", EchoRequest(message="b"))  # loader
        assert (hit.status, miss.status) == (Status.OK, Status.OK)
        assert miss.responses[0].message == "beta"
        assert limiter.limiter.degraded
        errors = sample(
            server,
            "grpcstack_cache_errors_total",
            {"service": "grpc-service", "method": "/echo.v1.EchoService/Echo", "layer": "l2"},
        )
        assert errors >= 1
        # Redis is optional: the replica keeps SERVING, degraded, rather than dropping out
        assert await health(server) == HealthCheckResponse.SERVING
        redis_process.start()
        async with asyncio.timeout(10):  # the limiter's probe finds Redis back after its backoff
            while limiter.limiter.degraded:
                out = await call("grpclib", server.port, "Echo", EchoRequest(message="c"))
                assert out.status is Status.OK
                await asyncio.sleep(0.05)
        out = await call("grpclib", server.port, "Echo", EchoRequest(message="c"))
        assert out.status is Status.OK and out.responses[0].message == "gamma"
        keys = [k async for k in server.resources.redis(2).scan_iter(match="grpcstack:cache:*")]
        assert len(keys) == 1  # "c" went to L2 again (a and b were written while it was down)


async def test_redis_can_be_required_for_readiness(redis_process: Any) -> None:
    from platform_services.echo import EchoServer

    server = EchoServer(
        settings(
            REDIS_URL=redis_process.url,
            REDIS_REQUIRED_FOR_READINESS=True,
            GRPC_HEALTH_CHECK_TIMEOUT_SECONDS=1.0,
        )
    )
    async with running(server):
        assert await health(server) == HealthCheckResponse.SERVING
        redis_process.stop()
        await eventually(server, HealthCheckResponse.NOT_SERVING)
        redis_process.start()
        await eventually(server, HealthCheckResponse.SERVING)


async def test_mongodb_down_not_serving_unavailable_then_recovery(mongo_process: Any) -> None:
    server = KvServer(kv_settings(mongo_process))
    async with running(server):
        await seed(server, a="alpha")
        assert (
            await call("grpclib", server.port, "Echo", EchoRequest(message="a"))
        ).status is Status.OK
        mongo_process.stop()
        await eventually(server, HealthCheckResponse.NOT_SERVING)
        out = await call("grpclib", server.port, "Echo", EchoRequest(message="b"))
        assert out.status is Status.UNAVAILABLE
        assert out.message == "MongoDB is unavailable, retry later"
        cached_answer = await call("grpclib", server.port, "Echo", EchoRequest(message="a"))
        assert cached_answer.status is Status.OK  # still served from the cache
        mongo_process.start()  # same port, empty storage
        await eventually(server, HealthCheckResponse.SERVING)
        await seed(server, b="beta")
        out = await call("grpclib", server.port, "Echo", EchoRequest(message="b"))
        assert out.status is Status.OK and out.responses[0].message == "beta"


async def test_motor_driver_behind_the_same_interface(mongo_process: Any) -> None:
    import pytest

    pytest.importorskip("motor")
    server = KvServer(kv_settings(mongo_process, MONGO_DRIVER="motor"))
    async with running(server):
        assert type(server.resources.mongo()).__module__.startswith("motor")
        await seed(server, m="motor value")
        out = await call("grpclib", server.port, "Echo", EchoRequest(message="m"))
        assert out.status is Status.OK and out.responses[0].message == "motor value"
        assert await server.resources.mongo_ready()


class PerUserKv(KvService):
    @cached(ttl=60)
    async def echo(self, message: EchoRequest) -> EchoResponse:
        self.loads += 1
        return EchoResponse(message=f"{message.message} for {current_call().user_id}")


class PerUserServer(AsyncBaseServer):
    def services(self) -> list[Any]:
        self.kv = PerUserKv(None)
        return [self.kv]


async def test_invalidation_helpers_and_per_user_keys() -> None:
    server = PerUserServer(settings(GRPC_ENABLE_AUTH=True))
    async with running(server):
        alice, bob = {"user-id": "alice"}, {"user-id": "bob"}
        a1 = await call("grpclib", server.port, "Echo", EchoRequest(message="k"), metadata=alice)
        b1 = await call("grpclib", server.port, "Echo", EchoRequest(message="k"), metadata=bob)
        assert (a1.responses[0].message, b1.responses[0].message) == ("k for alice", "k for bob")
        assert server.kv.loads == 2  # one entry per user: bob never sees alice's answer
        await call("grpclib", server.port, "Echo", EchoRequest(message="k"), metadata=alice)
        assert server.kv.loads == 2
        assert server.cache is not None
        await server.cache.invalidate_request(
            "/echo.v1.EchoService/Echo", EchoRequest(message="k"), user_id="alice"
        )
        await call("grpclib", server.port, "Echo", EchoRequest(message="k"), metadata=alice)
        await call("grpclib", server.port, "Echo", EchoRequest(message="k"), metadata=bob)
        assert server.kv.loads == 3  # only alice's entry was dropped
        deleted = await server.cache.invalidate_method("/echo.v1.EchoService/Echo")
        assert deleted == {"generation": 1, "l1": 2}
        await call("grpclib", server.port, "Echo", EchoRequest(message="k"), metadata=bob)
        assert server.kv.loads == 4
        anonymous = await call("grpclib", server.port, "Echo", EchoRequest(message="k"))
        assert anonymous.status is Status.UNAUTHENTICATED  # auth refuses it before the cache


async def test_invalidate_request_without_a_user_reaches_every_callers_entry() -> None:
    server = PerUserServer(settings(GRPC_ENABLE_AUTH=True))
    async with running(server):
        users = [{"user-id": "alice"}, {"user-id": "bob"}]
        for metadata in users * 2:
            await call("grpclib", server.port, "Echo", EchoRequest(message="k"), metadata=metadata)
        assert server.kv.loads == 2
        assert server.cache is not None
        await server.cache.invalidate_request("/echo.v1.EchoService/Echo", EchoRequest(message="k"))
        for metadata in users:
            await call("grpclib", server.port, "Echo", EchoRequest(message="k"), metadata=metadata)
        assert server.kv.loads == 4  # neither user is served the old answer


async def test_anonymous_callers_share_one_scope_apart_from_users() -> None:
    server = PerUserServer(settings())  # auth off: no call has a user id
    async with running(server):
        outs = [await call("grpclib", server.port, "Echo", EchoRequest(message="k")) for _ in "ab"]
        assert [o.responses[0].message for o in outs] == ["k for None"] * 2
        assert server.kv.loads == 1
        assert server.cache is not None
        await server.cache.invalidate_request("/echo.v1.EchoService/Echo", EchoRequest(message="k"))
        await call("grpclib", server.port, "Echo", EchoRequest(message="k"))
        assert server.kv.loads == 2


class SharedKv(KvService):
    @cached(ttl=60, shared=True)
    async def echo(self, message: EchoRequest) -> EchoResponse:
        self.loads += 1
        return EchoResponse(message=f"{message.message} for everyone")


class SharedServer(AsyncBaseServer):
    def services(self) -> list[Any]:
        self.kv = SharedKv(None)
        return [self.kv]


async def test_shared_methods_have_one_entry_for_every_caller() -> None:
    server = SharedServer(settings(GRPC_ENABLE_AUTH=True))
    async with running(server):
        for user in ("alice", "bob"):
            out = await call(
                "grpclib", server.port, "Echo", EchoRequest(message="k"), metadata={"user-id": user}
            )
            assert out.responses[0].message == "k for everyone"
        assert server.kv.loads == 1


class KeyedKv(KvService):
    """Requests differing only after '#' share one entry (key material, not the request)."""

    @cached(ttl=60, key=lambda service, request: request.message.split("#")[0])
    async def echo(self, message: EchoRequest) -> EchoResponse:
        self.loads += 1
        return EchoResponse(message=f"loaded {message.message}")


class KeyedServer(AsyncBaseServer):
    def services(self) -> list[Any]:
        self.kv = KeyedKv(None)
        return [self.kv]


async def test_key_callable_gives_the_key_material() -> None:
    server = KeyedServer(settings())
    async with running(server):
        first = await call("grpclib", server.port, "Echo", EchoRequest(message="a#1"))
        again = await call("grpclib", server.port, "Echo", EchoRequest(message="a#2"))
        other = await call("grpclib", server.port, "Echo", EchoRequest(message="b#1"))
        assert first.responses[0].message == again.responses[0].message == "loaded a#1"
        assert other.responses[0].message == "loaded b#1"
        assert server.kv.loads == 2
        assert server.cache is not None
        # invalidate_request applies the method's own key callable to the message it is given
        await server.cache.invalidate_request("/echo.v1.EchoService/Echo", EchoRequest(message="a"))
        out = await call("grpclib", server.port, "Echo", EchoRequest(message="a#3"))
        assert out.responses[0].message == "loaded a#3" and server.kv.loads == 3


class BadKeyKv(KvService):
    @cached(ttl=60, key=lambda service, request: request.count)  # type: ignore[arg-type,return-value]
    async def echo(self, message: EchoRequest) -> EchoResponse:
        return EchoResponse(message="never")


class BadKeyServer(AsyncBaseServer):
    def services(self) -> list[Any]:
        return [BadKeyKv(None)]


async def test_key_callable_returning_a_non_str_is_internal() -> None:
    server = BadKeyServer(settings())
    async with running(server):
        out = await call("grpclib", server.port, "Echo", EchoRequest(message="a"))
        assert out.status is Status.INTERNAL
        assert "int" not in (out.message or "")  # no internal detail leaks to the client


class L1OnlyKv(KvService):
    @cached(ttl=60, tiers=("l1",), key=lambda service, request: request.message.lower())
    async def echo(self, message: EchoRequest) -> EchoResponse:
        self.loads += 1
        return EchoResponse(message=message.message.lower())


class L1OnlyServer(AsyncBaseServer):
    def services(self) -> list[Any]:
        self.kv = L1OnlyKv(None)
        return [self.kv]


async def test_tiers_and_key_together_keep_entries_out_of_redis(redis_process: Any) -> None:
    server = L1OnlyServer(settings(REDIS_URL=redis_process.url))
    async with running(server):
        for text in ("Hello", "HELLO", "hello"):
            out = await call("grpclib", server.port, "Echo", EchoRequest(message=text))
            assert out.responses[0].message == "hello"
        assert server.kv.loads == 1
        redis = server.resources.redis(2)
        assert [k async for k in redis.scan_iter(match="grpcstack:cache:*")] == []
        assert [t.name for t in server.cache.tiered.tiers] == ["l1", "l2"]  # L2 was there
