"""What `grpcstack bench seed000|stacks` serve: the same services on grpcstack and on grpcio.

* ``CountingEchoServer``: grpcstack's echo server, writing how many calls its handler answered
  to BENCH_COUNT_FILE when it stops, so the bench verifies its OK counts.
* ``StrategyBenchServer``: grpcstack serving the strategy service alone.
* ``echo_handlers`` / ``strategy_handlers``: the same two methods as grpcio generic handlers with
  protobuf (upb) messages built from the same descriptors, for the grpc.aio peers in
  ``grpcstack.bench.grpcio_peer`` (the seed's design, or grpc.aio bare).
* ``seed_strategies``: the seed000 data set (strategies with versions) written to MongoDB.
"""

from __future__ import annotations

import os
from typing import Any

from google.protobuf import message_factory

from gen.echo.v1 import EchoRequest, EchoResponse
from gen.strategy.v1 import GetStrategyVersionRequest, StrategyVersion
from grpcstack import AsyncBaseServer

from .echo import EchoServer
from .strategy.service import StrategyService, version_id


def _write_count(count: int) -> None:
    path = os.environ.get("BENCH_COUNT_FILE")
    if path:
        with open(path, "w") as f:
            f.write(str(count))


class CountingEchoServer(EchoServer):
    async def after_stop(self) -> None:
        await super().after_stop()
        _write_count(self.echo.finished)


class StrategyBenchServer(AsyncBaseServer):
    """The strategy service alone on MONGO_URL (cache per GRPC_CACHE_ENABLED / REDIS_URL).

    Its OK count is the full chain's Prometheus ``grpc_server_handled_total`` (a subclass
    counting in the handler would hide the @cached method from the cache's binding)."""

    async def before_start(self) -> None:
        self.strategy = StrategyService(self.resources.mongo_db())

    def services(self) -> list[Any]:
        self.strategy.cache = self.cache
        return [self.strategy]


# --- grpcio side -----------------------------------------------------------------------------


def echo_handlers() -> list[Any]:
    import grpc

    request_cls = message_factory.GetMessageClass(EchoRequest.DESCRIPTOR)
    reply_cls = message_factory.GetMessageClass(EchoResponse.DESCRIPTOR)

    async def echo(request: Any, context: Any) -> Any:
        return reply_cls(message=request.message, payload_size=len(request.payload))

    handler = grpc.unary_unary_rpc_method_handler(
        echo,
        request_deserializer=request_cls.FromString,
        response_serializer=reply_cls.SerializeToString,
    )
    return [grpc.method_handlers_generic_handler("echo.v1.EchoService", {"Echo": handler})]


def strategy_handlers() -> list[Any]:
    """GetStrategyVersion as seed 000's "before" servicer: same query, same MongoDB."""
    import grpc
    from pymongo import AsyncMongoClient

    request_cls = message_factory.GetMessageClass(GetStrategyVersionRequest.DESCRIPTOR)
    reply_cls = message_factory.GetMessageClass(StrategyVersion.DESCRIPTOR)
    state: dict[str, Any] = {}

    def versions() -> Any:
        if "db" not in state:  # created inside the serving loop
            client = AsyncMongoClient(os.environ["MONGO_URL"], serverSelectionTimeoutMS=5000)
            state["db"] = client[os.environ.get("MONGO_DATABASE", "platform")]
        return state["db"]["strategy_versions"]

    async def get_strategy_version(request: Any, context: Any) -> Any:
        user = dict(context.invocation_metadata()).get("user-id", "")
        query: dict[str, Any] = {"strategy_id": request.strategy_id, "user_id": user}
        if request.seq:
            query["_id"] = version_id(request.strategy_id, request.seq)
        try:
            docs = await versions().find(query).sort("seq", -1).limit(1).to_list(1)
        except Exception as e:
            await context.abort(grpc.StatusCode.INTERNAL, str(e))
        if not docs:
            await context.abort(grpc.StatusCode.NOT_FOUND, "strategy version not found")
        doc = docs[0]
        return reply_cls(
            strategy_id=doc["strategy_id"],
            seq=doc["seq"],
            strategy_name=doc.get("strategy_name", ""),
            rule=doc["rule"],
            parameters=dict(doc.get("parameters") or {}),
            note=doc.get("note", ""),
            created_at_ms=doc.get("created_at_ms", 0),
        )

    handler = grpc.unary_unary_rpc_method_handler(
        get_strategy_version,
        request_deserializer=request_cls.FromString,
        response_serializer=reply_cls.SerializeToString,
    )
    return [
        grpc.method_handlers_generic_handler(
            "strategy.v1.StrategyService", {"GetStrategyVersion": handler}
        )
    ]


# --- data ------------------------------------------------------------------------------------


async def seed_strategies(
    mongo_url: str, database: str, user: str, strategies: int, versions: int
) -> list[bytes]:
    """Write ``strategies`` x ``versions`` versions for ``user``; return one encoded
    GetStrategyVersionRequest per version (the bench's distinct keys)."""
    from bson import ObjectId
    from pymongo import AsyncMongoClient

    client: Any = AsyncMongoClient(mongo_url, serverSelectionTimeoutMS=5000)
    try:
        db = client[database]
        await db["strategy_versions"].create_index(
            [("strategy_id", 1), ("user_id", 1), ("seq", -1)]
        )
        keys: list[bytes] = []
        docs = []
        for i in range(strategies):
            sid = str(ObjectId())
            for seq in range(1, versions + 1):
                docs.append(
                    {
                        "_id": version_id(sid, seq),
                        "strategy_id": sid,
                        "user_id": user,
                        "seq": seq,
                        "strategy_name": f"bench strategy {i}",
                        "rule": "sma(close, 20) > sma(close, 50) and rsi(close, 14) < 70",
                        "parameters": {"fast": "20", "slow": "50", "rsi": "14"},
                        "note": f"version {seq}",
                        "created_at_ms": 1_700_000_000_000 + seq,
                    }
                )
                keys.append(bytes(GetStrategyVersionRequest(strategy_id=sid, seq=seq)))
        await db["strategy_versions"].insert_many(docs)
        return keys
    finally:
        await client.close()
