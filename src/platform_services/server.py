"""PlatformServer: the example platform's services in one grpcstack server (`make run`).

Strategy (MongoDB), market data (DuckDB), indicator (market data over gRPC), LLM and OCR. With
nothing configured it runs on embedded defaults: a MongoDB wire server it starts itself
(secantusd, when MONGO_URL is unset), a DuckDB file and RapidOCR, all under data/platform/.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, ClassVar

from grpcstack import AsyncBaseServer, ServerSettings
from grpcstack.resources import Resources
from grpcstack.settings import ClientSettings

from . import sample_data
from .embedded_mongo import EmbeddedMongo, EmbeddedMongoError
from .indicator.market_data import MarketDataClient
from .indicator.service import IndicatorService
from .llm.engine import AnalysisEngine
from .llm.service import LlmService
from .market_data.service import MarketDataService
from .ocr.engine import OcrEngine, build_engine
from .ocr.service import SERVICE_NAME as OCR_SERVICE
from .ocr.service import OcrService
from .settings import PlatformSettings
from .strategy.service import StrategyService

log = logging.getLogger("platform_services")


class PlatformServer(AsyncBaseServer):
    settings_class: ClassVar[type[ServerSettings]] = PlatformSettings
    settings: PlatformSettings

    embedded_mongo: EmbeddedMongo | None = None

    async def start(self, *, sock: Any = None, http_sock: Any = None) -> None:
        s = self.settings
        if s.DUCKDB_PATH != ":memory:":
            Path(s.DUCKDB_PATH).parent.mkdir(parents=True, exist_ok=True)
        self.ocr_engine: OcrEngine = build_engine(
            s.OCR_ENGINE,
            tesseract_cmd=s.OCR_TESSERACT_CMD,
            max_concurrency=s.OCR_MAX_CONCURRENCY,
            timeout=s.OCR_TIMEOUT_SECONDS,
            max_pixels=s.OCR_MAX_IMAGE_PIXELS,
            rapidocr_threads=s.OCR_RAPIDOCR_THREADS,
        )
        # loading the OCR models takes seconds: overlap it with the embedded MongoDB's start
        probe = asyncio.ensure_future(self.ocr_engine.probe())
        try:
            await self._start_embedded_mongo()
        finally:
            await probe
        try:
            await super().start(sock=sock, http_sock=http_sock)
        except BaseException:
            await self._stop_embedded()
            self._close_ocr()
            raise

    async def _start_embedded_mongo(self) -> None:
        s = self.settings
        if not s.MONGO_URL:
            if not s.PLATFORM_EMBEDDED_MONGO:
                raise EmbeddedMongoError(
                    "the strategy service needs MongoDB: set MONGO_URL, or "
                    "PLATFORM_EMBEDDED_MONGO=true to start an embedded one"
                )
            self.embedded_mongo = EmbeddedMongo(
                s.PLATFORM_MONGO_STORAGE,
                database=s.MONGO_DATABASE or "platform",
                log_file=s.PLATFORM_DATA_DIR / "secantusd.log",
            )
            url = await self.embedded_mongo.start()
            # settings are frozen: the server and its (not yet opened) resources get a copy
            self.settings = s.model_copy(update={"MONGO_URL": url})
            self.resources = Resources(self.settings)

    async def before_start(self) -> None:
        s = self.settings
        if not self.ocr_engine.available:
            log.warning("%s: OCR reports NOT_SERVING", self.ocr_engine.unavailable_reason)

        async def ocr_engine_ready() -> bool:
            return self.ocr_engine.available

        self.add_readiness_check(ocr_engine_ready, service=OCR_SERVICE)

        self.market_data = MarketDataService(
            self.resources.duckdb(),
            parquet_root=s.MARKET_DATA_PARQUET_ROOT,
            max_batch_rows=s.MARKET_DATA_MAX_BATCH_ROWS,
            max_bars=s.MARKET_DATA_MAX_BARS,
        )
        await self.market_data.create_schema()
        self.strategy = StrategyService(self.resources.mongo_db())
        await self.strategy.ensure_indexes()
        self.market_data_client = MarketDataClient(
            self._market_data_target,
            default_timeout=s.INDICATOR_CALL_TIMEOUT_SECONDS,
            settings=ClientSettings.load(),  # GRPC_CLIENT_*: a bad one fails the start, not a call
            metrics_registry=self.metrics_registry,  # grpc_client_* of the call, on /metrics
        )
        self.indicator = IndicatorService(self.market_data_client, max_bars=s.INDICATOR_MAX_BARS)
        self.llm_engine = self._llm_engine()
        self.llm = LlmService(self.llm_engine, max_input_chars=s.LLM_MAX_INPUT_CHARS)
        self.ocr = OcrService(self.ocr_engine, s.OCR_DATA_ROOT, max_batch=s.OCR_MAX_BATCH_SIZE)
        if s.PLATFORM_LOAD_SAMPLE_DATA:
            bars = await sample_data.load_bars(self.market_data.store)
            strategies = await sample_data.load_strategies(self.resources.mongo_db())
            if bars or strategies:
                log.info("sample data loaded: %d bars, %d strategies", bars, strategies)

    def services(self) -> list[Any]:
        # writes invalidate the entries they change through the server's cache
        self.market_data.cache = self.cache
        self.strategy.cache = self.cache
        return [self.strategy, self.market_data, self.indicator, self.llm, self.ocr]

    async def after_stop(self) -> None:
        await self.market_data_client.aclose()
        await self.llm_engine.close()
        self._close_ocr()
        await self._stop_embedded()

    def _close_ocr(self) -> None:
        close = getattr(self.ocr_engine, "close", None)
        if close is not None:
            close()

    async def _stop_embedded(self) -> None:
        if self.embedded_mongo is not None:
            await self.embedded_mongo.stop()

    def _llm_engine(self) -> AnalysisEngine:
        s = self.settings
        if s.LLM_BASE_URL:
            from .llm.openai import OpenAiCompatibleEngine

            key = s.LLM_API_KEY.get_secret_value() if s.LLM_API_KEY else None
            return OpenAiCompatibleEngine(
                s.LLM_BASE_URL, s.LLM_MODEL, api_key=key, timeout=s.LLM_TIMEOUT_SECONDS
            )
        from .llm.extractive import ExtractiveAnalyzer

        return ExtractiveAnalyzer()

    def _market_data_target(self) -> str:
        target = self.settings.MARKET_DATA_GRPC_TARGET
        if target:
            return target
        host = self.settings.GRPC_SERVER_HOST
        if host in ("", "0.0.0.0", "::", "[::]"):
            host = "127.0.0.1"
        assert self.port is not None, "the market data target is this server: not started yet"
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
