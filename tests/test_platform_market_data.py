"""The market data service end to end on DuckDB: ingest, aggregation, the L1/L3 quote cache
with invalidation on new bars, Parquet import and export, and bad input."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import duckdb
import grpc
import pytest
import pytest_asyncio
from conftest import channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from platform_util import cache_count, loads, platform, user
from waiting import eventually

from gen.marketdata.v1 import (
    Bar,
    ExportParquetRequest,
    GetBarsRequest,
    GetStockQuoteRequest,
    ImportParquetRequest,
    IngestBarsRequest,
    MarketDataServiceStub,
)
from grpcstack.testing import serve
from platform_services import sample_data
from platform_services.market_data.quote import GET_QUOTE
from platform_services.market_data.schema import CREATE_BARS, Row, write_rows
from platform_services.server import PlatformServer

pytestmark = pytest.mark.asyncio(loop_scope="module")
ME = user("alice")
DAY = 86_400
T0 = int(dt.datetime(2024, 1, 1, tzinfo=dt.UTC).timestamp())  # a Monday


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PlatformServer]:
    srv = platform(tmp_path_factory.mktemp("market"), MARKET_DATA_MAX_BATCH_ROWS=50)
    async with serve(srv):
        yield srv


@pytest_asyncio.fixture(loop_scope="module")
async def stub(server: PlatformServer) -> AsyncIterator[MarketDataServiceStub]:
    async with channel(server) as ch:
        yield MarketDataServiceStub(ch)


def bar(symbol: str, day: int, close: float, **fields: float) -> Bar:
    values = {"open": close, "high": close + 1, "low": close - 1, "close": close, "volume": 100.0}
    values.update(fields)
    return Bar(symbol=symbol, time=T0 + day * DAY, **values)


async def ingest(stub: MarketDataServiceStub, *batches: list[Bar]) -> Any:
    return await stub.ingest_bars([IngestBarsRequest(bars=b) for b in batches], metadata=ME)


async def test_ingest_counts_and_reasons(stub: MarketDataServiceStub) -> None:
    good = [bar("TEST", d, 10.0 + d) for d in range(10)]
    bad = [
        bar("TEST", 20, float("nan")),
        bar("TEST", 21, -5.0),
        bar("TEST", 22, 10.0, high=5.0),
        bar("bad symbol!", 23, 10.0),
        Bar(symbol="TEST", time=0, open=1, high=1, low=1, close=1),
        bar("TEST", 24, 10.0, volume=-1),
        bar("TEST", 25, 10.0, open=20.0),
    ]
    reply = await ingest(stub, good[:5], bad + good[5:])
    assert (reply.accepted, reply.rejected) == (10, 7)
    assert [(r.batch, r.row) for r in reply.rejections] == [(1, i) for i in range(7)]
    reasons = [r.reason for r in reply.rejections]
    assert reasons[0].startswith("open: nan is not a finite number")
    assert reasons[1].startswith("open: must be positive")
    assert reasons[2].startswith("low: 9 is above high 5")
    assert reasons[3].startswith("symbol:")
    assert reasons[4].startswith("time:")
    assert reasons[5].startswith("volume:")
    assert reasons[6].startswith("open, close: must lie within")
    bars = [b async for b in stub.get_bars(GetBarsRequest(symbol="test"), metadata=ME)]
    assert [b.close for b in bars] == [10.0 + d for d in range(10)]


async def test_oversized_batch_is_rejected_after_the_earlier_ones(
    stub: MarketDataServiceStub,
) -> None:
    with pytest.raises(GRPCError) as err:
        await ingest(stub, [bar("BIG", 0, 5.0)], [bar("BIG", d, 5.0) for d in range(1, 52)])
    assert err.value.status is Status.INVALID_ARGUMENT
    assert "bars: batch 1 has 51 rows, the limit is 50" in (err.value.message or "")
    bars = [b async for b in stub.get_bars(GetBarsRequest(symbol="BIG"), metadata=ME)]
    assert len(bars) == 1  # batch 0 was written, nothing of batch 1


async def test_a_failing_batch_writes_nothing(tmp_path: Path) -> None:
    # rows that pass validation but fail in the database part way (the NOT NULL on a later
    # chunk): the transaction leaves no row of the batch behind
    con = duckdb.connect(str(tmp_path / "t.duckdb"))
    con.execute(CREATE_BARS)
    rows = [Row("OK", T0 + d * DAY, 1, 2, 1, 1, 1) for d in range(5)]
    rows.append(Row(None, T0, 1, 2, 1, 1, 1))  # type: ignore[arg-type]
    with pytest.raises(duckdb.ConstraintException):
        write_rows(con.cursor(), rows, chunk=2)
    assert con.execute("SELECT count(*) FROM bars").fetchone() == (0,)
    assert write_rows(con.cursor(), rows[:5], chunk=2) == 5


async def test_weekly_and_monthly_aggregation_in_duckdb(stub: MarketDataServiceStub) -> None:
    # 21 consecutive days from Monday 2024-01-01: three whole weeks, all in January
    days = [
        bar("AGG", d, 100.0 + d, high=200.0 + d, low=50.0 - d / 10, volume=d) for d in range(21)
    ]
    await ingest(stub, days)
    weekly = [
        b async for b in stub.get_bars(GetBarsRequest(symbol="AGG", interval="1w"), metadata=ME)
    ]
    assert [b.time for b in weekly] == [T0 + 7 * DAY * w for w in range(3)]
    for w, b in enumerate(weekly):
        week = days[7 * w : 7 * w + 7]
        assert b.open == week[0].open and b.close == week[-1].close
        assert b.high == max(x.high for x in week) and b.low == min(x.low for x in week)
        assert b.volume == sum(x.volume for x in week)
    monthly = [
        b
        async for b in stub.get_bars(
            GetBarsRequest(symbol="AGG", interval="1mo", start=T0 + 2 * DAY, end=T0 + 9 * DAY),
            metadata=ME,
        )
    ]
    assert len(monthly) == 1
    assert monthly[0].open == days[2].open and monthly[0].close == days[9].close


async def test_quote_cached_in_l1_and_l3_and_invalidated_by_new_bars(
    server: PlatformServer, stub: MarketDataServiceStub
) -> None:
    await ingest(stub, [bar("QTE", 0, 50.0), bar("QTE", 1, 55.0)])
    assert server.cache is not None
    l3_tier = server.cache.tiered.tiers[-1].cache  # DuckDB: its writes are batched off the call
    batches = l3_tier.batches
    before = loads(server, GET_QUOTE)
    quote = await stub.get_stock_quote(GetStockQuoteRequest(symbol="QTE"), metadata=ME)
    assert (quote.price, quote.previous_close, quote.change) == (55.0, 50.0, 5.0)
    assert math.isclose(quote.change_percent, 10.0)
    l1 = cache_count(server, "hits", GET_QUOTE, "l1")
    again = await stub.get_stock_quote(GetStockQuoteRequest(symbol="qte"), metadata=ME)
    assert again == quote and cache_count(server, "hits", GET_QUOTE, "l1") == l1 + 1
    assert loads(server, GET_QUOTE) == before + 1
    # L3 (DuckDB) holds it too, once its batched write landed: an L1 eviction is then answered
    # from L3 without a load
    await eventually(lambda: l3_tier.batches > batches)
    await l3_tier.flush()
    await server.cache.tiered.tiers[0].cache.clear()  # as if L1 had evicted it
    l3 = cache_count(server, "hits", GET_QUOTE, "l3")
    assert await stub.get_stock_quote(GetStockQuoteRequest(symbol="QTE"), metadata=ME) == quote
    assert cache_count(server, "hits", GET_QUOTE, "l3") == l3 + 1
    assert loads(server, GET_QUOTE) == before + 1
    # a new bar: the quote is reloaded at once, not after the TTL
    await ingest(stub, [bar("QTE", 2, 60.5)])
    fresh = await stub.get_stock_quote(GetStockQuoteRequest(symbol="QTE"), metadata=ME)
    assert (fresh.price, fresh.previous_close) == (60.5, 55.0)
    assert loads(server, GET_QUOTE) == before + 2


async def test_unknown_symbol_quote_is_not_found_until_bars_arrive(
    stub: MarketDataServiceStub,
) -> None:
    with pytest.raises(GRPCError) as err:
        await stub.get_stock_quote(GetStockQuoteRequest(symbol="NEWCO"), metadata=ME)
    assert err.value.status is Status.NOT_FOUND and "symbol" in (err.value.message or "")
    await ingest(stub, [bar("NEWCO", 0, 5.0)])  # drops the cached NOT_FOUND
    quote = await stub.get_stock_quote(GetStockQuoteRequest(symbol="NEWCO"), metadata=ME)
    assert quote.price == 5.0


async def test_parquet_round_trip(server: PlatformServer, stub: MarketDataServiceStub) -> None:
    exported = await stub.export_parquet(
        ExportParquetRequest(symbol="AAPL", path="out/aapl.parquet"), metadata=ME
    )
    expected = len(sample_data.daily_bars("AAPL", sample_data.SYMBOLS["AAPL"]))
    assert exported.rows == expected
    path = server.settings.MARKET_DATA_PARQUET_ROOT / "out" / "aapl.parquet"
    con = duckdb.connect()
    # the same file as another symbol's history, with two rows broken
    con.execute(
        f"COPY (SELECT 'AAPL2' AS symbol, time, CASE WHEN row_number() OVER (ORDER BY time) = 3 "
        f"THEN -1 ELSE open END AS open, high, low, close, CASE WHEN row_number() OVER "
        f"(ORDER BY time) = 4 THEN 'NaN'::DOUBLE ELSE volume END AS volume FROM '{path}') "
        f"TO '{path.parent / 'aapl2.parquet'}' (FORMAT PARQUET)"
    )
    imported = await stub.import_parquet(
        ImportParquetRequest(path="out/aapl2.parquet"), metadata=ME
    )
    assert (imported.rows, imported.rejected) == (expected - 2, 2)
    original = [b async for b in stub.get_bars(GetBarsRequest(symbol="AAPL"), metadata=ME)]
    copy = [b async for b in stub.get_bars(GetBarsRequest(symbol="AAPL2"), metadata=ME)]
    assert len(copy) == expected - 2
    by_time = {b.time: b for b in original}
    assert all(
        (b.open, b.close, b.volume)
        == (by_time[b.time].open, by_time[b.time].close, by_time[b.time].volume)
        for b in copy
    )


@pytest.mark.parametrize(
    ("method", "request_", "status", "fragment"),
    [
        ("get_bars", GetBarsRequest(), Status.INVALID_ARGUMENT, "symbol: required"),
        ("get_bars", GetBarsRequest(symbol="NOPE"), Status.NOT_FOUND, "unknown symbol 'NOPE'"),
        (
            "get_bars",
            GetBarsRequest(symbol="AAPL", start=10, end=5),
            Status.INVALID_ARGUMENT,
            "start: 10 is after end 5",
        ),
        ("get_bars", GetBarsRequest(symbol="AAPL", start=-1), Status.INVALID_ARGUMENT, "start"),
        (
            "get_bars",
            GetBarsRequest(symbol="AAPL", interval="5m"),
            Status.INVALID_ARGUMENT,
            "interval",
        ),
        (
            "get_bars",
            GetBarsRequest(symbol="AAPL", end=1_700_000_000_000),
            Status.INVALID_ARGUMENT,
            "milliseconds",
        ),
        (
            "get_stock_quote",
            GetStockQuoteRequest(symbol=""),
            Status.INVALID_ARGUMENT,
            "symbol: required",
        ),
        ("get_stock_quote", GetStockQuoteRequest(symbol="a b"), Status.INVALID_ARGUMENT, "symbol"),
        (
            "export_parquet",
            ExportParquetRequest(symbol="AAPL", path="../x.parquet"),
            Status.INVALID_ARGUMENT,
            "outside",
        ),
        (
            "export_parquet",
            ExportParquetRequest(symbol="AAPL", path="x.csv"),
            Status.INVALID_ARGUMENT,
            "path",
        ),
        (
            "export_parquet",
            ExportParquetRequest(symbol="NOPE", path="x.parquet"),
            Status.NOT_FOUND,
            "symbol",
        ),
        ("import_parquet", ImportParquetRequest(path="missing.parquet"), Status.NOT_FOUND, "path"),
    ],
)
async def test_bad_input(
    stub: MarketDataServiceStub, method: str, request_: Any, status: Status, fragment: str
) -> None:
    with pytest.raises(GRPCError) as err:
        result = getattr(stub, method)(request_, metadata=ME)
        if hasattr(result, "__aiter__"):
            [x async for x in result]
        else:
            await result
    assert err.value.status is status
    assert fragment in (err.value.message or "")


async def test_import_of_a_file_that_is_not_parquet(
    server: PlatformServer, stub: MarketDataServiceStub
) -> None:
    root = server.settings.MARKET_DATA_PARQUET_ROOT
    root.mkdir(parents=True, exist_ok=True)
    (root / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(GRPCError) as err:
        await stub.import_parquet(ImportParquetRequest(path="junk.parquet"), metadata=ME)
    assert err.value.status is Status.INVALID_ARGUMENT
    assert "not a Parquet file" in (err.value.message or "")
    con = duckdb.connect()
    con.execute(f"COPY (SELECT 1 AS a) TO '{root / 'cols.parquet'}' (FORMAT PARQUET)")
    with pytest.raises(GRPCError) as err:
        await stub.import_parquet(ImportParquetRequest(path="cols.parquet"), metadata=ME)
    assert "lacks column(s) symbol, time" in (err.value.message or "")


async def test_grpcio_client_streams(server: PlatformServer, pb2: Any) -> None:
    md = (("user-id", "alice"),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = pb2.market_data_grpc.MarketDataServiceStub(ch)

        async def batches() -> AsyncIterator[Any]:
            for d in range(3):
                yield pb2.market_data.IngestBarsRequest(
                    bars=[
                        pb2.market_data.Bar(
                            symbol="GRPCIO",
                            time=T0 + d * DAY,
                            open=2,
                            high=3,
                            low=1,
                            close=2,
                            volume=1,
                        )
                    ]
                )

        reply = await stub.IngestBars(batches(), metadata=md, timeout=30)
        assert (reply.accepted, reply.rejected) == (3, 0)
        bars = [
            b
            async for b in stub.GetBars(
                pb2.market_data.GetBarsRequest(symbol="GRPCIO"), metadata=md, timeout=30
            )
        ]
        assert [b.time for b in bars] == [T0 + d * DAY for d in range(3)]
        quote = await stub.GetStockQuote(
            pb2.market_data.GetStockQuoteRequest(symbol="GRPCIO"), metadata=md, timeout=30
        )
        assert quote.price == 2.0
        exported = await stub.ExportParquet(
            pb2.market_data.ExportParquetRequest(symbol="GRPCIO", path="grpcio.parquet"),
            metadata=md,
            timeout=30,
        )
        imported = await stub.ImportParquet(
            pb2.market_data.ImportParquetRequest(path="grpcio.parquet"), metadata=md, timeout=30
        )
        assert (exported.rows, imported.rows, imported.rejected) == (3, 3, 0)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetStockQuote(
                pb2.market_data.GetStockQuoteRequest(symbol="NOSUCH"), metadata=md, timeout=30
            )
        assert err.value.code() is grpc.StatusCode.NOT_FOUND
