"""Every platform RPC end to end through the full middleware chain, with grpcio's client and with
grpcstack.Client, on embedded defaults and with a real redis-server (L2); cache hits and
invalidations read from the server's grpcstack_cache_* metrics.

One scenario drives all 19 RPCs through a small driver per client (the same calls, the same
checks). Each run has its own user, symbol, image and keys, so the two clients' runs on one
server never see each other's cache entries. With Redis a second replica (sharing the first's
MongoDB and the Redis) answers the cached calls from L2 without loading them.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from betterproto2 import casing
from client_helpers import client_settings
from grpclib.exceptions import GRPCError
from images import text_image
from platform_util import cache_count, loads, platform
from redis_process import RedisProcess

from gen.common.v1 import Status as ResultStatus
from gen.indicator.v1 import (
    ComputeIndicatorRequest,
    ComputeIndicatorResponse,
    GetIndicatorMetadataRequest,
    GetIndicatorMetadataResponse,
    IndicatorServiceStub,
)
from gen.llm.v1 import (
    LlmRequest,
    LlmResponse,
    LlmServiceStub,
    LlmStreamResponse,
    ValidateDslRequest,
    ValidateDslResponse,
)
from gen.marketdata.v1 import (
    Bar,
    ExportParquetRequest,
    GetBarsRequest,
    GetStockQuoteRequest,
    ImportParquetRequest,
    IngestBarsRequest,
    IngestBarsResponse,
    MarketDataServiceStub,
    ParquetResponse,
    StockQuote,
)
from gen.ocr.v1 import (
    HealthCheckRequest,
    HealthCheckResponse,
    ImagePath,
    OcrBatchProgress,
    OcrBatchRequest,
    OcrRequest,
    OcrResponse,
    OcrServiceStub,
)
from gen.strategy.v1 import (
    BatchGetStrategyVersionsRequest,
    BatchGetStrategyVersionsResponse,
    CreateStrategyRequest,
    CreateStrategyVersionRequest,
    GetStrategyVersionRequest,
    ListStrategiesRequest,
    ListStrategiesResponse,
    Strategy,
    StrategyServiceStub,
    StrategyVersion,
    UpdateStrategyRequest,
    VersionRef,
)
from grpcstack.client import Client
from grpcstack.testing import serve
from platform_services import sample_data
from platform_services.server import PlatformServer

pytestmark = pytest.mark.asyncio(loop_scope="module")

STUBS: dict[str, type] = {
    "strategy.v1.StrategyService": StrategyServiceStub,
    "marketdata.v1.MarketDataService": MarketDataServiceStub,
    "indicator.v1.IndicatorService": IndicatorServiceStub,
    "llm.v1.LLMService": LlmServiceStub,
    "ocr.v1.OCRService": OcrServiceStub,
}
GET_VERSION = "/strategy.v1.StrategyService/GetStrategyVersion"
GET_QUOTE = "/marketdata.v1.MarketDataService/GetStockQuote"
METADATA = "/indicator.v1.IndicatorService/GetIndicatorMetadata"
VALIDATE = "/llm.v1.LLMService/ValidateDSL"
EXTRACT = "/ocr.v1.OCRService/ExtractText"
CACHED = [GET_VERSION, GET_QUOTE, METADATA, VALIDATE, EXTRACT]
DAY = 86_400
T0 = 1_704_067_200  # 2024-01-01, a Monday
AAPL_BARS = len(sample_data.daily_bars("AAPL", sample_data.SYMBOLS["AAPL"]))
TEXT = "Apple (NASDAQ: AAPL) rose 3.2% to $195.40 on 2025-03-05. Memory prices kept rising."
TIMEOUT = 60  # generous: a slow machine; every call's deadline still reaches the server


class Failed(Exception):
    """A call's non-OK status, whichever client made it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Driver:
    """Calls a method by its path; requests and replies are betterproto2 messages."""

    name: str

    async def unary(self, path: str, request: Any, reply: type, md: dict[str, str]) -> Any:
        raise NotImplementedError

    async def server_stream(
        self, path: str, request: Any, reply: type, md: dict[str, str]
    ) -> list[Any]:
        raise NotImplementedError

    async def client_stream(
        self, path: str, requests: list[Any], reply: type, md: dict[str, str]
    ) -> Any:
        raise NotImplementedError


class StackDriver(Driver):
    """grpcstack.Client with the generated betterproto2 stubs, as a service would call."""

    name = "client"

    def __init__(self, client: Client) -> None:
        self.client = client

    def _method(self, path: str) -> Any:
        _, service, method = path.split("/")
        return getattr(self.client.stub(STUBS[service]), casing.safe_snake_case(method))

    async def unary(self, path: str, request: Any, reply: type, md: dict[str, str]) -> Any:
        try:
            return await self._method(path)(request, metadata=md, timeout=TIMEOUT)
        except GRPCError as err:
            raise Failed(err.status.name, err.message or "") from None

    async def server_stream(
        self, path: str, request: Any, reply: type, md: dict[str, str]
    ) -> list[Any]:
        try:
            return [m async for m in self._method(path)(request, metadata=md, timeout=TIMEOUT)]
        except GRPCError as err:
            raise Failed(err.status.name, err.message or "") from None

    async def client_stream(
        self, path: str, requests: list[Any], reply: type, md: dict[str, str]
    ) -> Any:
        try:
            return await self._method(path)(requests, metadata=md, timeout=TIMEOUT)
        except GRPCError as err:
            raise Failed(err.status.name, err.message or "") from None


class GrpcioDriver(Driver):
    """grpcio's asyncio channel (gRPC core's HTTP/2), with betterproto2 (de)serialisers."""

    name = "grpcio"

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel

    async def unary(self, path: str, request: Any, reply: type, md: dict[str, str]) -> Any:
        call = self.channel.unary_unary(
            path, request_serializer=bytes, response_deserializer=reply.parse
        )
        try:
            return await call(request, metadata=tuple(md.items()), timeout=TIMEOUT)
        except grpc.aio.AioRpcError as err:
            raise Failed(err.code().name, err.details() or "") from None

    async def server_stream(
        self, path: str, request: Any, reply: type, md: dict[str, str]
    ) -> list[Any]:
        call = self.channel.unary_stream(
            path, request_serializer=bytes, response_deserializer=reply.parse
        )
        try:
            return [m async for m in call(request, metadata=tuple(md.items()), timeout=TIMEOUT)]
        except grpc.aio.AioRpcError as err:
            raise Failed(err.code().name, err.details() or "") from None

    async def client_stream(
        self, path: str, requests: list[Any], reply: type, md: dict[str, str]
    ) -> Any:
        call = self.channel.stream_unary(
            path, request_serializer=bytes, response_deserializer=reply.parse
        )
        try:
            return await call(iter(requests), metadata=tuple(md.items()), timeout=TIMEOUT)
        except grpc.aio.AioRpcError as err:
            raise Failed(err.code().name, err.details() or "") from None


@dataclass
class Platform:
    backend: str
    a: PlatformServer
    b: PlatformServer | None  # with Redis: a second replica on the same Redis and MongoDB


def images(root: Path) -> None:
    for run in ("grpcio", "client"):
        text_image(root / "images" / f"{run}.png", [f"HELLO {run.upper()}"], size=28)


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["embedded", "redis"])
async def platforms(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Platform]:
    backend = request.param
    root = tmp_path_factory.mktemp(f"e2e-{backend}")
    async with AsyncExitStack() as stack:
        if backend == "embedded":
            images(root / "a")
            a = platform(root / "a")
            await stack.enter_async_context(serve(a))
            yield Platform(backend, a, None)
            return
        redis = RedisProcess(root)
        redis.start()
        stack.callback(redis.stop)
        for replica in ("a", "b"):
            images(root / replica)
        a = platform(root / "a", REDIS_URL=redis.url)
        await stack.enter_async_context(serve(a))
        assert a.settings.MONGO_URL is not None  # its embedded secantusd's
        b = platform(
            root / "b",
            REDIS_URL=redis.url,
            MONGO_URL=a.settings.MONGO_URL,
            PLATFORM_LOAD_SAMPLE_DATA=False,
        )
        await stack.enter_async_context(serve(b))
        yield Platform(backend, a, b)


@asynccontextmanager
async def connect(kind: str, server: PlatformServer) -> AsyncIterator[Driver]:
    """A driver of one kind on one server; its channel or client closed on exit."""
    target = f"127.0.0.1:{server.port}"
    if kind == "grpcio":
        async with grpc.aio.insecure_channel(target) as ch:
            yield GrpcioDriver(ch)
    else:
        async with Client(target, settings=client_settings()) as client:
            yield StackDriver(client)


@pytest_asyncio.fixture(loop_scope="module", params=["grpcio", "client"])
async def driver(request: pytest.FixtureRequest, platforms: Platform) -> AsyncIterator[Driver]:
    async with connect(request.param, platforms.a) as d:
        yield d


class Counts:
    """grpcstack_cache_* of the cached methods on one server, as deltas since creation."""

    def __init__(self, server: PlatformServer) -> None:
        self.server = server
        self.start = self.read()

    def read(self) -> dict[tuple[str, str], float]:
        values: dict[tuple[str, str], float] = {}
        for method in CACHED:
            values[(method, "loads")] = loads(self.server, method)
            for layer in ("l1", "l2"):
                for metric in ("hits", "misses"):
                    values[(method, f"{layer}_{metric}")] = cache_count(
                        self.server, metric, method, layer
                    )
        return values

    def delta(self, method: str, what: str) -> float:
        return self.read()[(method, what)] - self.start[(method, what)]


async def test_every_rpc(platforms: Platform, driver: Driver) -> None:
    run = driver.name
    me = {"user-id": f"e2e-{run}-{platforms.backend}"}
    a = Counts(platforms.a)
    redis = platforms.b is not None

    # --- strategy: MongoDB, the per-user cache, exact invalidation ------------------------
    created = await driver.unary(
        "/strategy.v1.StrategyService/CreateStrategy",
        CreateStrategyRequest(name=f"e2e {run}", description="end to end"),
        Strategy,
        me,
    )
    sid = created.strategy_id
    first = await driver.unary(
        "/strategy.v1.StrategyService/CreateStrategyVersion",
        CreateStrategyVersionRequest(strategy_id=sid, rule="close > sma(close, 20)"),
        StrategyVersion,
        me,
    )
    assert first.seq == 1
    latest = GetStrategyVersionRequest(strategy_id=sid, seq=0)
    for _ in range(2):
        got = await driver.unary(GET_VERSION, latest, StrategyVersion, me)
        assert (got.seq, got.rule) == (1, "close > sma(close, 20)")
    assert a.delta(GET_VERSION, "loads") == 1 and a.delta(GET_VERSION, "l1_hits") == 1
    if redis:
        assert a.delta(GET_VERSION, "l2_misses") == 1  # L2 asked before the load
    second = await driver.unary(
        "/strategy.v1.StrategyService/CreateStrategyVersion",
        CreateStrategyVersionRequest(strategy_id=sid, rule="rsi(close, 14) < 30", note="n"),
        StrategyVersion,
        me,
    )
    assert second.seq == 2
    # the write dropped (sid, 0): the next read loads again and sees version 2
    assert (await driver.unary(GET_VERSION, latest, StrategyVersion, me)).seq == 2
    assert a.delta(GET_VERSION, "loads") == 2
    renamed = await driver.unary(
        "/strategy.v1.StrategyService/UpdateStrategy",
        UpdateStrategyRequest(strategy_id=sid, name=f"renamed {run}"),
        Strategy,
        me,
    )
    assert (renamed.name, renamed.latest_seq) == (f"renamed {run}", 2)
    v1 = await driver.unary(
        GET_VERSION, GetStrategyVersionRequest(strategy_id=sid, seq=1), StrategyVersion, me
    )
    assert v1.strategy_name == f"renamed {run}"
    listed = await driver.unary(
        "/strategy.v1.StrategyService/ListStrategies",
        ListStrategiesRequest(page_size=10),
        ListStrategiesResponse,
        me,
    )
    assert [s.strategy_id for s in listed.strategies] == [sid]
    batch = await driver.server_stream(
        "/strategy.v1.StrategyService/BatchGetStrategyVersions",
        BatchGetStrategyVersionsRequest(
            refs=[VersionRef(strategy_id=sid, seq=s) for s in (2, 9, 1)]
        ),
        BatchGetStrategyVersionsResponse,
        me,
    )
    assert [(r.ref.seq, r.found) for r in batch] == [(2, True), (9, False), (1, True)]
    with pytest.raises(Failed) as err:
        await driver.unary(GET_VERSION, latest, StrategyVersion, {"user-id": "someone-else"})
    assert err.value.code == "NOT_FOUND"
    with pytest.raises(Failed) as err:
        await driver.unary(
            GET_VERSION, GetStrategyVersionRequest(strategy_id=""), StrategyVersion, me
        )
    assert err.value.code == "INVALID_ARGUMENT" and "strategy_id" in err.value.message

    # --- market data: DuckDB, streams both ways, the quote cache --------------------------
    symbol = f"ZZ{run.upper()}"

    def bar(day: int, close: float) -> Bar:
        return Bar(
            symbol=symbol, time=T0 + day * DAY, open=close, high=close + 1, low=close - 1,
            close=close, volume=10,
        )  # fmt: skip

    ingested = await driver.client_stream(
        "/marketdata.v1.MarketDataService/IngestBars",
        [
            IngestBarsRequest(bars=[bar(0, 10), bar(1, 11)]),
            IngestBarsRequest(bars=[bar(2, 12), bar(3, math.nan)]),
        ],
        IngestBarsResponse,
        me,
    )
    assert (ingested.accepted, ingested.rejected) == (3, 1)
    assert (ingested.rejections[0].batch, ingested.rejections[0].row) == (1, 1)
    quote_req = GetStockQuoteRequest(symbol=symbol.lower())
    for _ in range(2):
        quote = await driver.unary(GET_QUOTE, quote_req, StockQuote, me)
        assert (quote.price, quote.previous_close) == (12, 11)
    assert a.delta(GET_QUOTE, "loads") == 1 and a.delta(GET_QUOTE, "l1_hits") == 1
    await driver.client_stream(
        "/marketdata.v1.MarketDataService/IngestBars",
        [IngestBarsRequest(bars=[bar(4, 14)])],
        IngestBarsResponse,
        me,
    )
    # new bars dropped the symbol's cached quote
    assert (await driver.unary(GET_QUOTE, quote_req, StockQuote, me)).price == 14
    assert a.delta(GET_QUOTE, "loads") == 2
    bars = await driver.server_stream(
        "/marketdata.v1.MarketDataService/GetBars", GetBarsRequest(symbol=symbol), Bar, me
    )
    assert [b.close for b in bars] == [10, 11, 12, 14]
    exported = await driver.unary(
        "/marketdata.v1.MarketDataService/ExportParquet",
        ExportParquetRequest(symbol=symbol, path=f"{run}.parquet"),
        ParquetResponse,
        me,
    )
    imported = await driver.unary(
        "/marketdata.v1.MarketDataService/ImportParquet",
        ImportParquetRequest(path=f"{run}.parquet"),
        ParquetResponse,
        me,
    )
    assert (exported.rows, imported.rows, imported.rejected) == (4, 4, 0)
    # an import is new bars too: the quote is loaded again
    assert (await driver.unary(GET_QUOTE, quote_req, StockQuote, me)).price == 14
    assert a.delta(GET_QUOTE, "loads") == 3
    with pytest.raises(Failed) as err:
        await driver.unary(GET_QUOTE, GetStockQuoteRequest(symbol="NOSUCH"), StockQuote, me)
    assert err.value.code == "NOT_FOUND"

    # --- indicator: metadata cache; bars fetched from market data over grpcstack.Client ---
    name = "macd" if run == "grpcio" else "bollinger"  # a key of this run's own
    for _ in range(2):
        meta = await driver.unary(
            METADATA, GetIndicatorMetadataRequest(name=name), GetIndicatorMetadataResponse, me
        )
        assert [i.name for i in meta.indicators] == [name]
    assert a.delta(METADATA, "loads") == 1 and a.delta(METADATA, "l1_hits") == 1
    sma = await driver.unary(
        "/indicator.v1.IndicatorService/ComputeIndicator",
        ComputeIndicatorRequest(symbol="AAPL", indicator="sma", parameters={"period": 5}),
        ComputeIndicatorResponse,
        me,
    )
    assert sma.bars_used == AAPL_BARS and len(sma.points) == AAPL_BARS - 4
    with pytest.raises(Failed) as err:
        await driver.unary(
            "/indicator.v1.IndicatorService/ComputeIndicator",
            ComputeIndicatorRequest(symbol="NOPE", indicator="sma"),
            ComputeIndicatorResponse,
            me,
        )
    assert err.value.code == "NOT_FOUND"  # market data's answer, passed on

    # --- LLM: the extractive analyzer, its token stream, the DSL cache --------------------
    whole = await driver.unary(
        "/llm.v1.LLMService/AnalyzeText", LlmRequest(text=TEXT), LlmResponse, me
    )
    assert whole.status == ResultStatus.SUCCESS and whole.entities
    tokens = await driver.server_stream(
        "/llm.v1.LLMService/AnalyzeTextStream", LlmRequest(text=TEXT), LlmStreamResponse, me
    )
    assert tokens[-1].is_complete and "".join(t.token for t in tokens) == whole.analysis
    period = 7 if run == "grpcio" else 9
    expression = f"sma(close, {period}) > sma(close, 50)"  # a key of this run's own
    for _ in range(2):
        valid = await driver.unary(
            VALIDATE, ValidateDslRequest(expression=expression), ValidateDslResponse, me
        )
        assert valid.valid and valid.functions == ["sma"]
    assert a.delta(VALIDATE, "loads") == 1 and a.delta(VALIDATE, "l1_hits") == 1
    broken = await driver.unary(
        VALIDATE, ValidateDslRequest(expression="close >"), ValidateDslResponse, me
    )
    assert not broken.valid and broken.errors[0].column == 8

    # --- OCR: RapidOCR, the content-hash cache, the batch stream --------------------------
    image = OcrRequest(private_image_path=f"{run}.png", language="english")
    for _ in range(2):
        ocr = await driver.unary(EXTRACT, image, OcrResponse, me)
        assert ocr.status == ResultStatus.SUCCESS and f"HELLO {run.upper()}" in ocr.text
    assert a.delta(EXTRACT, "loads") == 1 and a.delta(EXTRACT, "l1_hits") == 1
    progress = await driver.server_stream(
        "/ocr.v1.OCRService/ExtractTextBatch",
        OcrBatchRequest(
            image_paths=[ImagePath(private_path=f"{run}.png"), ImagePath(private_path="no.png")],
            language="english",
        ),
        OcrBatchProgress,
        me,
    )
    assert [p.processed_images for p in progress] == [1, 2]
    assert [p.current_result.status for p in progress] == [
        ResultStatus.SUCCESS,
        ResultStatus.FAILURE,
    ]
    health = await driver.unary(
        "/ocr.v1.OCRService/CheckHealth", HealthCheckRequest(), HealthCheckResponse, me
    )
    assert (health.engine_type, health.model_loaded) == ("rapidocr", True)

    if platforms.b is None:
        return
    # --- Redis: the other replica answers every cached call from L2, loading nothing --------
    b = Counts(platforms.b)
    async with connect(run, platforms.b) as other:
        v1_req = GetStrategyVersionRequest(strategy_id=sid, seq=1)  # A read it after the rename
        got = await other.unary(GET_VERSION, v1_req, StrategyVersion, me)
        assert got.strategy_name == f"renamed {run}"
        assert (await other.unary(GET_QUOTE, quote_req, StockQuote, me)).price == 14
        meta = await other.unary(
            METADATA, GetIndicatorMetadataRequest(name=name), GetIndicatorMetadataResponse, me
        )
        assert [i.name for i in meta.indicators] == [name]
        valid = await other.unary(
            VALIDATE, ValidateDslRequest(expression=expression), ValidateDslResponse, me
        )
        assert valid.valid
        assert f"HELLO {run.upper()}" in (await other.unary(EXTRACT, image, OcrResponse, me)).text
        for method in CACHED:
            assert (b.delta(method, "l2_hits"), b.delta(method, "loads")) == (1, 0), method
        # a write on A reaches B's L1 through Redis: B loads (sid, 0) again, bounded wait
        assert (await other.unary(GET_VERSION, latest, StrategyVersion, me)).seq == 2
        assert b.delta(GET_VERSION, "loads") == 1  # (sid, 0) was dropped by the rename
        await driver.unary(
            "/strategy.v1.StrategyService/CreateStrategyVersion",
            CreateStrategyVersionRequest(strategy_id=sid, rule="close > 1"),
            StrategyVersion,
            me,
        )
        async with asyncio.timeout(20):
            while (await other.unary(GET_VERSION, latest, StrategyVersion, me)).seq != 3:
                await asyncio.sleep(0.05)
        assert b.delta(GET_VERSION, "loads") == 2
