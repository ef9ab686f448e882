"""Settings of the example platform: the framework's plus what its services read."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field

from grpcstack import ServerSettings
from grpcstack.settings import Port


class PlatformSettings(ServerSettings):
    SERVICE_NAME: str = "platform"
    GRPC_SERVER_ENABLE_REFLECTION: bool = (
        True  # a development platform: grpcurl works out of the box
    )

    # Connect / gRPC-Web: every service also answers curl, browsers and Connect clients here
    GRPC_HTTP_PORT: Port | None = 8080

    # OCR
    OCR_DATA_ROOT: Path = Path("data/images")  # image paths in requests are relative to this
    OCR_TESSERACT_CMD: str = "tesseract"
    OCR_MAX_CONCURRENCY: Annotated[int, Field(gt=0)] = 2  # tesseract processes at once
    OCR_TIMEOUT_SECONDS: Annotated[float, Field(gt=0)] = 120.0
    OCR_MAX_BATCH_SIZE: Annotated[int, Field(gt=0)] = 100
    OCR_MAX_IMAGE_PIXELS: Annotated[int, Field(gt=0)] = 40_000_000
