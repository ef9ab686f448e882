"""Settings of the example platform: the framework's plus what its services read.

With nothing set, `make run` serves every service on embedded defaults: a DuckDB file and a
MongoDB wire server (secantusd) of its own under PLATFORM_DATA_DIR, L1 memory cache, in-process
rate limits, RapidOCR, and the offline extractive analyzer for LLM calls. REDIS_URL, MONGO_URL
and LLM_BASE_URL switch to real servers with no code change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr

from grpcstack import ServerSettings
from grpcstack.settings import ClientSettings


class PlatformSettings(ServerSettings):
    SERVICE_NAME: str = "platform"
    GRPC_SERVER_ENABLE_REFLECTION: bool = (
        True  # a development platform: grpcurl works out of the box
    )

    # Platform storage (embedded defaults)
    PLATFORM_DATA_DIR: Path = Path("data/platform")
    DUCKDB_PATH: str = "data/platform/market.duckdb"
    MONGO_DATABASE: str | None = "platform"
    PLATFORM_EMBEDDED_MONGO: bool = True  # start secantusd when MONGO_URL is unset
    PLATFORM_MONGO_STORAGE: str = "data/platform/mongo"  # or ":memory:"
    PLATFORM_LOAD_SAMPLE_DATA: bool = True  # first start: sample strategies and a year of bars
    GRPC_CACHE_L3_ENABLED: bool = True  # GetStockQuote is cached in DuckDB too (the seed's L3)

    # Market data
    MARKET_DATA_PARQUET_ROOT: Path = Path("data/platform/parquet")
    MARKET_DATA_MAX_BATCH_ROWS: Annotated[int, Field(gt=0)] = 10_000  # bars per IngestBars message
    MARKET_DATA_MAX_BARS: Annotated[int, Field(gt=0)] = 100_000  # bars per GetBars answer

    # Indicator: where market data is served ("" = this server itself)
    MARKET_DATA_GRPC_TARGET: str = ""
    INDICATOR_MAX_BARS: Annotated[int, Field(gt=0)] = 10_000
    INDICATOR_CALL_TIMEOUT_SECONDS: Annotated[float, Field(gt=0)] = 10.0  # when the caller has none

    # LLM: an OpenAI-compatible server (vLLM, llama.cpp, Ollama) when LLM_BASE_URL is set,
    # else the offline extractive analyzer
    LLM_BASE_URL: str | None = None  # e.g. http://127.0.0.1:11434/v1
    LLM_MODEL: str = ""
    LLM_API_KEY: SecretStr | None = None
    LLM_TIMEOUT_SECONDS: Annotated[float, Field(gt=0)] = 120.0
    LLM_MAX_INPUT_CHARS: Annotated[int, Field(gt=0)] = 100_000

    # OCR
    OCR_ENGINE: Literal["rapidocr", "tesseract"] = "rapidocr"
    OCR_DATA_ROOT: Path = Path("data/images")  # image paths in requests are relative to this
    OCR_TESSERACT_CMD: str = "tesseract"
    OCR_MAX_CONCURRENCY: Annotated[int, Field(gt=0)] = 2  # recognitions at once
    OCR_TIMEOUT_SECONDS: Annotated[float, Field(gt=0)] = 120.0
    OCR_MAX_BATCH_SIZE: Annotated[int, Field(gt=0)] = 100
    OCR_MAX_IMAGE_PIXELS: Annotated[int, Field(gt=0)] = 40_000_000
    OCR_RAPIDOCR_THREADS: Annotated[int, Field(ge=0)] = 1  # ONNX threads per worker, 0 = all


class OcrClientSettings(ClientSettings):
    """The OCR worker's client (seed 001): where the OCR service is and how long a call may take."""

    OCR_GRPC_HOST: str = "127.0.0.1"
    OCR_GRPC_PORT: Annotated[int, Field(ge=1, le=65535)] = 50051
    OCR_GRPC_TIMEOUT: Annotated[float, Field(gt=0)] = 300.0  # seconds per call
