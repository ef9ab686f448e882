"""PlatformServer: the example platform's services in one grpcstack server (`make run`)."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from grpcstack import AsyncBaseServer, ServerSettings

from .ocr.engine import INSTALL_HINT, TesseractEngine
from .ocr.service import SERVICE_NAME as OCR_SERVICE
from .ocr.service import OcrService
from .settings import PlatformSettings

log = logging.getLogger("platform_services")


class PlatformServer(AsyncBaseServer):
    settings_class: ClassVar[type[ServerSettings]] = PlatformSettings
    settings: PlatformSettings

    async def before_start(self) -> None:
        s = self.settings
        self.ocr_engine = TesseractEngine(
            s.OCR_TESSERACT_CMD,
            max_concurrency=s.OCR_MAX_CONCURRENCY,
            timeout=s.OCR_TIMEOUT_SECONDS,
            max_pixels=s.OCR_MAX_IMAGE_PIXELS,
        )
        await self.ocr_engine.probe()
        if not self.ocr_engine.available:
            log.warning("OCR engine unavailable (%s): OCR reports NOT_SERVING", INSTALL_HINT)

        async def ocr_engine_ready() -> bool:
            return self.ocr_engine.available

        self.add_readiness_check(ocr_engine_ready, service=OCR_SERVICE)

    def services(self) -> list[Any]:
        s = self.settings
        return [OcrService(self.ocr_engine, s.OCR_DATA_ROOT, max_batch=s.OCR_MAX_BATCH_SIZE)]
