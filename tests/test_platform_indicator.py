"""The indicator service end to end: metadata cached in L1, indicators checked against a
reference computation, and the call to market data carrying deadline, correlation id and user."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import duckdb
import grpc
import numpy as np
import pytest
import pytest_asyncio
from client_helpers import client_settings
from conftest import channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from platform_util import cache_count, loads, platform_settings, user
from waiting import eventually

from gen.indicator.v1 import (
    ComputeIndicatorRequest,
    GetIndicatorMetadataRequest,
    IndicatorServiceStub,
)
from grpcstack.client import Client
from grpcstack.context import CallContext
from grpcstack.middleware import Middleware
from grpcstack.middleware.base import methods
from grpcstack.testing import serve
from platform_services import sample_data
from platform_services.server import PlatformServer

pytestmark = pytest.mark.asyncio(loop_scope="module")
ME = user("alice")
GET_BARS = "/marketdata.v1.MarketDataService/GetBars"
METADATA = "/indicator.v1.IndicatorService/GetIndicatorMetadata"
CLOSES = [r.close for r in sample_data.daily_bars("AAPL", sample_data.SYMBOLS["AAPL"])]
TIMES = [r.time for r in sample_data.daily_bars("AAPL", sample_data.SYMBOLS["AAPL"])]


class Recorder(Middleware):
    """Keeps what the market data side saw of each GetBars call (server-side context)."""

    name = "recorder"

    def __init__(self) -> None:
        super().__init__(selector=methods(GET_BARS))
        self.calls: list[tuple[str | None, float | None, str | None]] = []

    def on_request(self, event: Any, call: CallContext) -> None:
        self.calls.append((call.correlation_id, call.time_remaining(), call.user_id))


class RecordingPlatform(PlatformServer):
    def middlewares(self) -> list[Middleware]:
        chain = super().middlewares()
        self.recorder = Recorder()
        chain.insert(-1, self.recorder)  # after correlation id and auth, before error mapping
        return chain


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RecordingPlatform]:
    srv = RecordingPlatform(platform_settings(tmp_path_factory.mktemp("indicator")))
    async with serve(srv):
        yield srv


@pytest_asyncio.fixture(loop_scope="module")
async def stub(server: PlatformServer) -> AsyncIterator[IndicatorServiceStub]:
    async with channel(server) as ch:
        yield IndicatorServiceStub(ch)


# --- the reference: numpy and DuckDB, written independently of compute.py ----------------


def ref_sma(x: np.ndarray, n: int) -> np.ndarray:
    out = np.full(len(x), np.nan)
    out[n - 1 :] = np.convolve(x, np.ones(n) / n, mode="valid")
    return out


def ref_ema(x: np.ndarray, n: int) -> np.ndarray:
    out = np.full(len(x), np.nan)
    start = int(np.argmax(~np.isnan(x)))
    if len(x) - start < n:
        return out
    out[start + n - 1] = np.mean(x[start : start + n])
    k = 2 / (n + 1)
    for i in range(start + n, len(x)):
        out[i] = x[i] * k + out[i - 1] * (1 - k)
    return out


def ref_rsi(x: np.ndarray, n: int) -> np.ndarray:
    d = np.diff(x)
    up, down = np.clip(d, 0, None), np.clip(-d, 0, None)
    out = np.full(len(x), np.nan)
    g, lo = up[:n].mean(), down[:n].mean()
    for i in range(n, len(x)):
        if i > n:
            g = (g * (n - 1) + up[i - 1]) / n
            lo = (lo * (n - 1) + down[i - 1]) / n
        out[i] = 100.0 if lo == 0 else 100 - 100 / (1 + g / lo)
    return out


def ref_bollinger_duckdb(closes: list[float], n: int, k: float) -> list[tuple[Any, ...]]:
    con = duckdb.connect()
    con.execute("CREATE TABLE c (i INTEGER, x DOUBLE)")
    con.executemany("INSERT INTO c VALUES (?, ?)", list(enumerate(closes)))
    return con.execute(
        f"""SELECT i, avg(x) OVER w + {k} * stddev_pop(x) OVER w, avg(x) OVER w,
                   avg(x) OVER w - {k} * stddev_pop(x) OVER w
            FROM c WINDOW w AS (ORDER BY i ROWS BETWEEN {n - 1} PRECEDING AND CURRENT ROW)
            QUALIFY i >= {n - 1} ORDER BY i"""
    ).fetchall()


def defined(*series: np.ndarray) -> list[tuple[int, list[float]]]:
    rows = []
    for i in range(len(series[0])):
        values = [float(s[i]) for s in series]
        if not any(math.isnan(v) for v in values):
            rows.append((TIMES[i], values))
    return rows


def assert_points(reply: Any, expected: list[tuple[int, list[float]]]) -> None:
    assert [p.time for p in reply.points] == [t for t, _ in expected]
    for point, (_, values) in zip(reply.points, expected, strict=True):
        assert point.values == pytest.approx(values, rel=1e-9, abs=1e-9)


async def compute(stub: IndicatorServiceStub, indicator: str, **params: float) -> Any:
    return await stub.compute_indicator(
        ComputeIndicatorRequest(symbol="AAPL", indicator=indicator, parameters=params),
        metadata=ME,
    )


async def test_indicators_match_the_reference(stub: IndicatorServiceStub) -> None:
    x = np.array(CLOSES)
    assert_points(await compute(stub, "sma", period=20), defined(ref_sma(x, 20)))
    assert_points(await compute(stub, "ema", period=12), defined(ref_ema(x, 12)))
    assert_points(await compute(stub, "rsi"), defined(ref_rsi(x, 14)))
    macd_line = ref_ema(x, 12) - ref_ema(x, 26)
    signal = ref_ema(macd_line, 9)
    reply = await compute(stub, "macd")
    assert reply.outputs == ["macd", "signal", "histogram"]
    assert_points(reply, defined(macd_line, signal, macd_line - signal))
    reply = await compute(stub, "bollinger", period=20, num_std=2.5)
    assert reply.bars_used == len(CLOSES)
    assert_points(
        reply, [(TIMES[i], [u, m, lo]) for i, u, m, lo in ref_bollinger_duckdb(CLOSES, 20, 2.5)]
    )


async def test_a_range_and_an_interval_are_passed_on(stub: IndicatorServiceStub) -> None:
    reply = await stub.compute_indicator(
        ComputeIndicatorRequest(
            symbol="aapl",
            indicator="sma",
            start=TIMES[10],
            end=TIMES[40],
            interval="1w",
            parameters={"period": 2},
        ),
        metadata=ME,
    )
    assert reply.symbol == "AAPL"
    assert 5 <= reply.bars_used <= 7  # 31 weekdays are 6 or 7 weekly bars
    assert len(reply.points) == reply.bars_used - 1


async def test_market_data_call_carries_deadline_correlation_id_and_user(
    server: RecordingPlatform, stub: IndicatorServiceStub
) -> None:
    server.recorder.calls.clear()
    await stub.compute_indicator(
        ComputeIndicatorRequest(symbol="MSFT", indicator="ema"),
        metadata={**ME, "x-correlation-id": "corr-indicator-1"},
        timeout=4,
    )
    assert len(server.recorder.calls) == 1
    correlation_id, remaining, user_id = server.recorder.calls[0]
    assert correlation_id == "corr-indicator-1"
    assert user_id == "alice"
    assert remaining is not None and 0 < remaining <= 4  # the caller's, not the 10 s default
    # without a deadline from the caller the call still gets one (INDICATOR_CALL_TIMEOUT_SECONDS)
    await stub.compute_indicator(
        ComputeIndicatorRequest(symbol="MSFT", indicator="ema"), metadata=ME
    )
    _, remaining, _ = server.recorder.calls[1]
    assert remaining is not None and 4 < remaining <= 10


def access_lines(caplog: pytest.LogCaptureFixture, method: str) -> list[dict[str, Any]]:
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "grpcstack.access"]
    return [line for line in lines if line["grpc.method"] == method]


async def test_market_data_call_goes_through_grpcstack_client(
    server: RecordingPlatform, caplog: pytest.LogCaptureFixture
) -> None:
    # the outer caller is grpcstack.Client too; the inner call is the platform's Client
    caplog.set_level(logging.INFO, logger="grpcstack.access")
    server.recorder.calls.clear()
    handled = {
        "grpc_service": "marketdata.v1.MarketDataService",
        "grpc_method": "GetBars",
        "grpc_type": "server_stream",
        "grpc_code": "OK",
    }
    before = server.metrics_registry.get_sample_value("grpc_client_handled_total", handled) or 0
    async with Client(f"127.0.0.1:{server.port}", settings=client_settings()) as outer:
        stub = outer.stub(IndicatorServiceStub)
        reply = await stub.compute_indicator(
            ComputeIndicatorRequest(symbol="AAPL", indicator="sma", parameters={"period": 5}),
            metadata={**ME, "x-correlation-id": "corr-client-7"},
            timeout=3,
        )
        assert reply.bars_used == len(CLOSES)
        # no correlation id from the caller: the indicator's generated one travels on
        await stub.compute_indicator(
            ComputeIndicatorRequest(symbol="AAPL", indicator="ema"), metadata=ME, timeout=3
        )
    (cid1, remaining1, user1), (cid2, remaining2, _) = server.recorder.calls
    assert (cid1, user1) == ("corr-client-7", "alice")
    assert remaining1 is not None and 0 < remaining1 <= 3
    assert remaining2 is not None and 0 < remaining2 <= 3
    # the market data side's access log: the caller's correlation id and user on GetBars
    # (a line is written once the call's trailers went out: it may follow the client's return)
    await eventually(
        lambda: [len(access_lines(caplog, m)) for m in ("ComputeIndicator", "GetBars")] == [2, 2]
    )
    outer_lines = access_lines(caplog, "ComputeIndicator")
    inner_lines = access_lines(caplog, "GetBars")
    assert [i["correlation_id"] for i in inner_lines] == [o["correlation_id"] for o in outer_lines]
    assert inner_lines[0]["correlation_id"] == "corr-client-7" and cid2 is not None
    assert inner_lines[1]["correlation_id"] == cid2
    assert {i["user_id"] for i in inner_lines} == {"alice"}
    # the inner call was the platform's grpcstack.Client (its grpc_client_* metrics counted it)
    after = server.metrics_registry.get_sample_value("grpc_client_handled_total", handled)
    assert after == before + 2


async def test_metadata_cached_in_l1(server: PlatformServer, stub: IndicatorServiceStub) -> None:
    every = await stub.get_indicator_metadata(GetIndicatorMetadataRequest(), metadata=ME)
    assert [i.name for i in every.indicators] == ["sma", "ema", "rsi", "macd", "bollinger"]
    before, hits = loads(server, METADATA), cache_count(server, "hits", METADATA, "l1")
    for _ in range(3):
        one = await stub.get_indicator_metadata(
            GetIndicatorMetadataRequest(name="macd"), metadata=ME
        )
    assert [p.name for p in one.indicators[0].parameters] == ["fast", "slow", "signal"]
    assert loads(server, METADATA) == before + 1
    assert cache_count(server, "hits", METADATA, "l1") == hits + 2
    with pytest.raises(GRPCError) as err:
        await stub.get_indicator_metadata(GetIndicatorMetadataRequest(name="vwap"), metadata=ME)
    assert err.value.status is Status.NOT_FOUND and "vwap" in (err.value.message or "")


@pytest.mark.parametrize(
    ("request_", "status", "fragment"),
    [
        (ComputeIndicatorRequest(indicator="sma"), Status.INVALID_ARGUMENT, "symbol: required"),
        (ComputeIndicatorRequest(symbol="AAPL"), Status.INVALID_ARGUMENT, "indicator: required"),
        (
            ComputeIndicatorRequest(symbol="AAPL", indicator="vwap"),
            Status.INVALID_ARGUMENT,
            "indicator: unknown",
        ),
        (
            ComputeIndicatorRequest(symbol="AAPL", indicator="sma", parameters={"period": -3}),
            Status.INVALID_ARGUMENT,
            "parameters.period",
        ),
        (
            ComputeIndicatorRequest(symbol="AAPL", indicator="sma", parameters={"period": 2.5}),
            Status.INVALID_ARGUMENT,
            "whole number",
        ),
        (
            ComputeIndicatorRequest(
                symbol="AAPL", indicator="sma", parameters={"period": math.nan}
            ),
            Status.INVALID_ARGUMENT,
            "parameters.period",
        ),
        (
            ComputeIndicatorRequest(symbol="AAPL", indicator="sma", parameters={"window": 3}),
            Status.INVALID_ARGUMENT,
            "no parameter 'window'",
        ),
        (
            ComputeIndicatorRequest(
                symbol="AAPL", indicator="macd", parameters={"fast": 30, "slow": 10}
            ),
            Status.INVALID_ARGUMENT,
            "parameters.fast",
        ),
        (
            ComputeIndicatorRequest(symbol="AAPL", indicator="sma", start=9, end=5),
            Status.INVALID_ARGUMENT,
            "start",
        ),
        (
            ComputeIndicatorRequest(symbol="NOPE", indicator="sma"),
            Status.NOT_FOUND,
            "unknown symbol 'NOPE'",
        ),
        (
            ComputeIndicatorRequest(symbol="AAPL", indicator="sma", interval="7s"),
            Status.INVALID_ARGUMENT,
            "interval",
        ),
    ],
)
async def test_bad_input(
    stub: IndicatorServiceStub, request_: ComputeIndicatorRequest, status: Status, fragment: str
) -> None:
    with pytest.raises(GRPCError) as err:
        await stub.compute_indicator(request_, metadata=ME)
    assert err.value.status is status
    assert fragment in (err.value.message or "")


async def test_market_data_down_is_unavailable(tmp_path: Path) -> None:
    # a market data target nobody listens on: UNAVAILABLE, not a hang or an internal error
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP) as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]  # bound, never listening: connections are refused
        srv = PlatformServer(
            platform_settings(tmp_path, MARKET_DATA_GRPC_TARGET=f"127.0.0.1:{dead_port}")
        )
        async with serve(srv), channel(srv) as ch:
            with pytest.raises(GRPCError) as err:
                await IndicatorServiceStub(ch).compute_indicator(
                    ComputeIndicatorRequest(symbol="AAPL", indicator="sma"), metadata=ME
                )
    assert err.value.status is Status.UNAVAILABLE
    assert "market data service unreachable" in (err.value.message or "")


async def test_grpcio_client(server: PlatformServer, pb2: Any) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = pb2.indicator_grpc.IndicatorServiceStub(ch)
        reply = await stub.ComputeIndicator(
            pb2.indicator.ComputeIndicatorRequest(
                symbol="AAPL", indicator="rsi", parameters={"period": 14}
            ),
            metadata=(("user-id", "alice"),),
            timeout=30,
        )
        assert_points(reply, defined(ref_rsi(np.array(CLOSES), 14)))
        meta = await stub.GetIndicatorMetadata(
            pb2.indicator.GetIndicatorMetadataRequest(name="bollinger"),
            metadata=(("user-id", "alice"),),
            timeout=30,
        )
        assert list(meta.indicators[0].outputs) == ["upper", "middle", "lower"]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ComputeIndicator(
                pb2.indicator.ComputeIndicatorRequest(
                    symbol="AAPL", indicator="sma", parameters={"period": -1}
                ),
                metadata=(("user-id", "alice"),),
                timeout=30,
            )
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
