"""The platform as `make run` serves it (the CLI, embedded defaults, a fresh directory), and the
same services against real redis-server and a separately run MongoDB wire server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import pytest
from cli_process import start_cli
from conftest import channel
from grpclib.client import Channel
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from images import text_image
from platform_util import alive, cache_count, loads, platform, user
from waiting import eventually

from gen.indicator.v1 import ComputeIndicatorRequest, IndicatorServiceStub
from gen.llm.v1 import LlmRequest, LlmServiceStub
from gen.marketdata.v1 import GetStockQuoteRequest, MarketDataServiceStub
from gen.ocr.v1 import OcrRequest, OcrServiceStub
from gen.strategy.v1 import (
    CreateStrategyVersionRequest,
    GetStrategyVersionRequest,
    StrategyServiceStub,
)
from grpcstack.testing import make_channel, serve
from platform_services import sample_data
from platform_services.strategy.service import GET_VERSION

SERVICES = [
    "strategy.v1.StrategyService",
    "marketdata.v1.MarketDataService",
    "indicator.v1.IndicatorService",
    "llm.v1.LLMService",
    "ocr.v1.OCRService",
]
ME = user("alice")


def processes_in(directory: Path) -> list[int]:
    """Pids of processes whose working directory is ``directory`` (the server and its children)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if Path(os.readlink(entry / "cwd")) == directory:
                    found.append(int(entry.name))
    return found


async def call_every_service(ch: Channel) -> None:
    health = HealthStub(ch)
    for name in ["", *SERVICES]:
        reply = await health.Check(HealthCheckRequest(service=name))
        assert reply.status == HealthCheckResponse.SERVING, name
    version = await StrategyServiceStub(ch).get_strategy_version(
        GetStrategyVersionRequest(strategy_id=sample_data.strategy_id(1, 1)), metadata=ME
    )
    assert version.seq == 2
    quote = await MarketDataServiceStub(ch).get_stock_quote(
        GetStockQuoteRequest(symbol="AAPL"), metadata=ME
    )
    assert quote.price > 0
    rsi = await IndicatorServiceStub(ch).compute_indicator(
        ComputeIndicatorRequest(symbol="MSFT", indicator="rsi"), metadata=ME
    )
    assert rsi.points and all(0 <= p.values[0] <= 100 for p in rsi.points)
    tokens = [
        p
        async for p in LlmServiceStub(ch).analyze_text_stream(
            LlmRequest(text="Shares rose 3% on 2025-03-05. Profit was $1.2 billion."), metadata=ME
        )
    ]
    assert tokens[-1].is_complete and "".join(t.token for t in tokens).startswith("Shares rose")
    ocr = await OcrServiceStub(ch).extract_text(
        OcrRequest(private_image_path="scan.png"), metadata=ME
    )
    assert "HELLO" in ocr.text


async def test_the_cli_serves_every_service_on_embedded_defaults(tmp_path: Path) -> None:
    # what `make run` does, in a fresh directory: nothing configured but the ports and auth (its
    # Connect listener's default 8080 may be taken on a shared machine: any free port instead)
    text_image(tmp_path / "data" / "images" / "scan.png", ["HELLO PLATFORM"])
    proc, port = await start_cli(
        "platform_services.server:PlatformServer",
        cwd=str(tmp_path),
        env={"GRPC_ENABLE_AUTH": "true", "GRPC_HTTP_PORT": "0"},
        startup_timeout=120,  # loads models and sample data, and starts secantusd
    )
    try:  # (start_cli keeps reading its stderr: a chatty server never blocks on a pipe)
        ch = make_channel("127.0.0.1", port)
        try:
            await call_every_service(ch)
        finally:
            ch.close()
        assert (tmp_path / "data" / "platform" / "market.duckdb").is_file()
        assert (tmp_path / "data" / "platform" / "mongo").is_dir()
        children = [p for p in processes_in(tmp_path) if p != proc.pid]
        assert len(children) == 1  # the embedded secantusd
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(60):
            assert await proc.wait() == 0
        assert processes_in(tmp_path) == []  # secantusd stopped with the platform
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="PR_SET_PDEATHSIG is Linux's")
async def test_a_killed_platform_takes_its_embedded_mongodb_along(tmp_path: Path) -> None:
    # SIGKILL runs no shutdown code: the kernel (PR_SET_PDEATHSIG) asks the child to stop, and its
    # guard (secantusd_guard.py, tested alone in test_secantusd_guard) ends it if that stop hangs
    proc, _ = await start_cli(
        "platform_services.server:PlatformServer",
        cwd=str(tmp_path),
        env={
            "GRPC_HTTP_PORT": "0",
            "PLATFORM_LOAD_SAMPLE_DATA": "false",
            "PLATFORM_MONGO_STORAGE": str(tmp_path / "mongo"),  # on disk: SIGTERM, not a kill
            "OCR_ENGINE": "tesseract",  # no models to load: OCR's health is not the point here
        },
        startup_timeout=120,
    )
    children: list[int] = []
    try:
        children = [p for p in processes_in(tmp_path) if p != proc.pid]
        assert len(children) == 1
        assert "secantusd" in cmdline(children[0])
        proc.kill()
        await proc.wait()
        await eventually(lambda: not alive(children[0]), timeout=30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for pid in children:  # only when the test failed: do not leave it running
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def two_dirs(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        text_image(d / "images" / "scan.png", ["HELLO REDIS"])
    return a, b


async def test_real_redis_and_mongodb_shared_by_two_replicas(
    redis_process: object, mongo_process: object, two_dirs: tuple[Path, Path]
) -> None:
    urls = {
        "REDIS_URL": redis_process.url,  # type: ignore[attr-defined]
        "MONGO_URL": mongo_process.url,  # type: ignore[attr-defined]
    }
    a = platform(two_dirs[0], **urls)
    b = platform(two_dirs[1], **urls)
    async with serve(a), serve(b), channel(a) as cha, channel(b) as chb:
        assert a.embedded_mongo is None and b.embedded_mongo is None
        await call_every_service(cha)
        sa, sb = StrategyServiceStub(cha), StrategyServiceStub(chb)
        sid = sample_data.strategy_id(1, 2)
        latest = GetStrategyVersionRequest(strategy_id=sid, seq=0)
        first = await sa.get_strategy_version(latest, metadata=ME)
        # B has never loaded it: its answer comes from the shared Redis tier
        assert await sb.get_strategy_version(latest, metadata=ME) == first
        assert cache_count(b, "hits", GET_VERSION, "l2") == 1 and loads(b, GET_VERSION) == 0
        # a write on A invalidates B's copies too (Redis pub/sub drops B's L1 entry)
        new = await sa.create_strategy_version(
            CreateStrategyVersionRequest(strategy_id=sid, rule="close > sma(close, 200)"),
            metadata=ME,
        )
        async with asyncio.timeout(20):
            while (await sb.get_strategy_version(latest, metadata=ME)).seq != new.seq:
                await asyncio.sleep(0.05)  # the broadcast is asynchronous: wait for it, bounded
