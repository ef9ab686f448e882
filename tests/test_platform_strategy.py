"""The strategy service end to end: MongoDB (embedded secantusd), the full middleware chain,
the per-user cache with exact invalidation, one-query batches and user isolation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio
from conftest import channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from platform_util import cache_count, loads, platform, user
from pymongo import AsyncMongoClient, monitoring

from gen.strategy.v1 import (
    BatchGetStrategyVersionsRequest,
    CreateStrategyRequest,
    CreateStrategyVersionRequest,
    GetStrategyVersionRequest,
    ListStrategiesRequest,
    StrategyServiceStub,
    UpdateStrategyRequest,
    VersionRef,
)
from grpcstack.testing import serve
from platform_services import sample_data
from platform_services.server import PlatformServer
from platform_services.strategy.service import GET_VERSION, StrategyService

pytestmark = pytest.mark.asyncio(loop_scope="module")


class FindCounter(monitoring.CommandListener):
    """Counts the find commands the strategy service sends (PyMongo's command monitoring)."""

    def __init__(self) -> None:
        self.finds: list[dict[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "find":
            self.finds.append(dict(event.command))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


class CountingPlatform(PlatformServer):
    """The platform with its strategy service on a client that counts commands."""

    async def before_start(self) -> None:
        await super().before_start()
        self.finds = FindCounter()
        self.counting_client: Any = AsyncMongoClient(
            self.settings.MONGO_URL, event_listeners=[self.finds]
        )
        self.strategy = StrategyService(self.counting_client[self.settings.MONGO_DATABASE])

    async def after_stop(self) -> None:
        await self.counting_client.close()
        await super().after_stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[CountingPlatform]:
    root = tmp_path_factory.mktemp("strategy")
    srv = CountingPlatform(platform(root).settings)
    async with serve(srv):
        yield srv


@pytest_asyncio.fixture(loop_scope="module")
async def stub(server: PlatformServer) -> AsyncIterator[StrategyServiceStub]:
    async with channel(server) as ch:
        yield StrategyServiceStub(ch)


async def test_sample_data_is_loaded_per_user(stub: StrategyServiceStub) -> None:
    alice = await stub.list_strategies(ListStrategiesRequest(), metadata=user("alice"))
    assert [s.strategy_id for s in alice.strategies] == [
        sample_data.strategy_id(1, 1),
        sample_data.strategy_id(1, 2),
    ]
    assert {s.user_id for s in alice.strategies} == {"alice"}
    version = await stub.get_strategy_version(
        GetStrategyVersionRequest(strategy_id=sample_data.strategy_id(1, 2), seq=0),
        metadata=user("alice"),
    )
    assert version.seq == 3 and version.strategy_name == "RSI mean reversion"


async def test_versions_are_cached_and_writes_invalidate_exactly(
    server: PlatformServer, stub: StrategyServiceStub
) -> None:
    me = user("carol")
    sid = await stub.create_strategy(CreateStrategyRequest(name="Breakout"), metadata=me)
    sid = sid.strategy_id
    v1 = await stub.create_strategy_version(
        CreateStrategyVersionRequest(strategy_id=sid, rule="close > highest(close, 20)"),
        metadata=me,
    )
    assert v1.seq == 1
    get1 = GetStrategyVersionRequest(strategy_id=sid, seq=1)
    latest = GetStrategyVersionRequest(strategy_id=sid, seq=0)
    get2 = GetStrategyVersionRequest(strategy_id=sid, seq=2)

    before = loads(server, GET_VERSION)
    assert (await stub.get_strategy_version(get1, metadata=me)).rule == v1.rule
    assert (await stub.get_strategy_version(latest, metadata=me)).seq == 1
    with pytest.raises(GRPCError) as err:
        await stub.get_strategy_version(get2, metadata=me)
    assert err.value.status is Status.NOT_FOUND
    assert loads(server, GET_VERSION) == before + 3
    hits = cache_count(server, "hits", GET_VERSION, "l1")
    await stub.get_strategy_version(get1, metadata=me)
    await stub.get_strategy_version(latest, metadata=me)
    with pytest.raises(GRPCError):
        await stub.get_strategy_version(get2, metadata=me)  # a cached NOT_FOUND
    assert cache_count(server, "hits", GET_VERSION, "l1") == hits + 3
    assert loads(server, GET_VERSION) == before + 3

    # a new version: (id, 0) and (id, 2) change, (id, 1) stays cached
    await stub.create_strategy_version(
        CreateStrategyVersionRequest(strategy_id=sid, rule="close < lowest(close, 20)"),
        metadata=me,
    )
    assert (await stub.get_strategy_version(latest, metadata=me)).seq == 2
    assert (await stub.get_strategy_version(get2, metadata=me)).rule == "close < lowest(close, 20)"
    await stub.get_strategy_version(get1, metadata=me)
    assert loads(server, GET_VERSION) == before + 5

    # a description does not show in versions: nothing reloads; a rename reloads all three
    await stub.update_strategy(UpdateStrategyRequest(strategy_id=sid, description="x"), metadata=me)
    for req in (get1, get2, latest):
        assert (await stub.get_strategy_version(req, metadata=me)).strategy_name == "Breakout"
    assert loads(server, GET_VERSION) == before + 5
    renamed = await stub.update_strategy(
        UpdateStrategyRequest(strategy_id=sid, name="Breakout v2"), metadata=me
    )
    assert renamed.name == "Breakout v2" and renamed.latest_seq == 2
    for req in (get1, get2, latest):
        assert (await stub.get_strategy_version(req, metadata=me)).strategy_name == "Breakout v2"
    assert loads(server, GET_VERSION) == before + 8


async def test_users_never_see_or_invalidate_each_other(
    server: PlatformServer, stub: StrategyServiceStub
) -> None:
    alice_sid = sample_data.strategy_id(1, 1)
    request = GetStrategyVersionRequest(strategy_id=alice_sid, seq=1)
    mine = await stub.get_strategy_version(request, metadata=user("alice"))
    with pytest.raises(GRPCError) as err:
        await stub.get_strategy_version(request, metadata=user("bob"))
    assert err.value.status is Status.NOT_FOUND  # not PERMISSION_DENIED: ids leak nothing
    with pytest.raises(GRPCError) as err:
        await stub.update_strategy(
            UpdateStrategyRequest(strategy_id=alice_sid, name="mine now"), metadata=user("bob")
        )
    assert err.value.status is Status.NOT_FOUND
    with pytest.raises(GRPCError) as err:
        await stub.create_strategy_version(
            CreateStrategyVersionRequest(strategy_id=alice_sid, rule="close > 1"),
            metadata=user("bob"),
        )
    assert err.value.status is Status.NOT_FOUND
    # alice's cached entry survived bob's attempts: served from L1, unchanged
    hits = cache_count(server, "hits", GET_VERSION, "l1")
    again = await stub.get_strategy_version(request, metadata=user("alice"))
    assert again == mine and cache_count(server, "hits", GET_VERSION, "l1") == hits + 1
    bobs = await stub.list_strategies(ListStrategiesRequest(), metadata=user("bob"))
    assert alice_sid not in {s.strategy_id for s in bobs.strategies}


async def test_batch_is_one_query_in_request_order(
    server: CountingPlatform, stub: StrategyServiceStub
) -> None:
    a1, a2 = sample_data.strategy_id(1, 1), sample_data.strategy_id(1, 2)
    bob = sample_data.strategy_id(2, 1)
    refs = [
        VersionRef(strategy_id=a2, seq=3),
        VersionRef(strategy_id=a1, seq=1),
        VersionRef(strategy_id=a1, seq=9),  # no such version
        VersionRef(strategy_id=bob, seq=1),  # bob's: reported missing to alice
        VersionRef(strategy_id=a2, seq=1),
        VersionRef(strategy_id=a1, seq=1),  # twice
    ]
    server.finds.finds.clear()
    replies = [
        r
        async for r in stub.batch_get_strategy_versions(
            BatchGetStrategyVersionsRequest(refs=refs), metadata=user("alice")
        )
    ]
    assert [(r.ref.strategy_id, r.ref.seq) for r in replies] == [
        (r.strategy_id, r.seq) for r in refs
    ]
    assert [r.found for r in replies] == [True, True, False, False, True, True]
    assert [r.version.seq for r in replies if r.found] == [3, 1, 1, 1]
    assert len(server.finds.finds) == 1
    query = server.finds.finds[0]["filter"]
    assert query["user_id"] == "alice" and "$or" not in query
    assert sorted(query["_id"]["$in"]) == sorted({f"{r.strategy_id}:{r.seq}" for r in refs})


async def test_list_pages(stub: StrategyServiceStub) -> None:
    me = user("dave")
    made = [
        (await stub.create_strategy(CreateStrategyRequest(name=f"s{i}"), metadata=me)).strategy_id
        for i in range(5)
    ]
    seen, token = [], ""
    while True:
        page = await stub.list_strategies(
            ListStrategiesRequest(page_size=2, page_token=token), metadata=me
        )
        assert len(page.strategies) <= 2
        seen += [s.strategy_id for s in page.strategies]
        token = page.next_page_token
        if not token:
            break
    assert seen == made


@pytest.mark.parametrize(
    ("call", "request_", "field"),
    [
        ("get_strategy_version", GetStrategyVersionRequest(), "strategy_id: required"),
        ("get_strategy_version", GetStrategyVersionRequest(strategy_id="x"), "strategy_id"),
        (
            "get_strategy_version",
            GetStrategyVersionRequest(strategy_id=sample_data.strategy_id(1, 1), seq=-1),
            "seq",
        ),
        ("create_strategy", CreateStrategyRequest(name="  "), "name: required"),
        (
            "create_strategy_version",
            CreateStrategyVersionRequest(
                strategy_id=sample_data.strategy_id(1, 1), rule="sma(close, 20) >"
            ),
            "rule: line 1, column 17",
        ),
        (
            "update_strategy",
            UpdateStrategyRequest(strategy_id=sample_data.strategy_id(1, 1)),
            "nothing to update",
        ),
        ("list_strategies", ListStrategiesRequest(page_size=-1), "page_size"),
        ("list_strategies", ListStrategiesRequest(page_token="zz"), "page_token"),
    ],
)
async def test_bad_input_names_the_field(
    stub: StrategyServiceStub, call: str, request_: Any, field: str
) -> None:
    with pytest.raises(GRPCError) as err:
        await getattr(stub, call)(request_, metadata=user("alice"))
    assert err.value.status is Status.INVALID_ARGUMENT
    assert field in (err.value.message or "")


async def test_bad_batches(stub: StrategyServiceStub) -> None:
    sid = sample_data.strategy_id(1, 1)
    for refs, field in [
        ([], "refs: at least one"),
        ([VersionRef(strategy_id=sid, seq=0)], "refs[0].seq"),
        ([VersionRef(strategy_id=sid, seq=1), VersionRef(seq=1)], "refs[1].strategy_id"),
        ([VersionRef(strategy_id=sid, seq=1)] * 1001, "limit is 1000"),
    ]:
        with pytest.raises(GRPCError) as err:
            [
                r
                async for r in stub.batch_get_strategy_versions(
                    BatchGetStrategyVersionsRequest(refs=refs), metadata=user("alice")
                )
            ]
        assert err.value.status is Status.INVALID_ARGUMENT
        assert field in (err.value.message or "")


async def test_no_user_is_unauthenticated(stub: StrategyServiceStub) -> None:
    with pytest.raises(GRPCError) as err:
        await stub.list_strategies(ListStrategiesRequest())
    assert err.value.status is Status.UNAUTHENTICATED


async def test_grpcio_client(server: PlatformServer, pb2: Any) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = pb2.strategy_grpc.StrategyServiceStub(ch)
        md = (("user-id", "alice"),)
        reply = await stub.GetStrategyVersion(
            pb2.strategy.GetStrategyVersionRequest(
                strategy_id=sample_data.strategy_id(1, 1), seq=2
            ),
            metadata=md,
            timeout=30,
        )
        assert reply.seq == 2 and "crosses_above" in reply.rule
        replies = [
            r
            async for r in stub.BatchGetStrategyVersions(
                pb2.strategy.BatchGetStrategyVersionsRequest(
                    refs=[pb2.strategy.VersionRef(strategy_id=reply.strategy_id, seq=1)]
                ),
                metadata=md,
                timeout=30,
            )
        ]
        assert [r.found for r in replies] == [True]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetStrategyVersion(
                pb2.strategy.GetStrategyVersionRequest(strategy_id=""), metadata=md, timeout=30
            )
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        made = await stub.CreateStrategy(
            pb2.strategy.CreateStrategyRequest(name="grpcio"),
            metadata=(("user-id", "erin"),),
            timeout=30,
        )
        erin = (("user-id", "erin"),)
        version = await stub.CreateStrategyVersion(
            pb2.strategy.CreateStrategyVersionRequest(
                strategy_id=made.strategy_id, rule="close > 1", parameters={"k": "v"}
            ),
            metadata=erin,
            timeout=30,
        )
        assert version.seq == 1 and dict(version.parameters) == {"k": "v"}
        renamed = await stub.UpdateStrategy(
            pb2.strategy.UpdateStrategyRequest(strategy_id=made.strategy_id, name="renamed"),
            metadata=erin,
            timeout=30,
        )
        assert renamed.name == "renamed" and renamed.latest_seq == 1
        listed = await stub.ListStrategies(
            pb2.strategy.ListStrategiesRequest(page_size=5), metadata=erin, timeout=30
        )
        assert [s.name for s in listed.strategies] == ["renamed"]
        assert not listed.next_page_token
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CreateStrategyVersion(
                pb2.strategy.CreateStrategyVersionRequest(
                    strategy_id=made.strategy_id, rule="close >"
                ),
                metadata=erin,
                timeout=30,
            )
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "rule: line 1, column 8" in (err.value.details() or "")
