"""OCRService (seed 001): ExtractText, ExtractTextBatch (progress stream), CheckHealth.

An invalid request (no path, a path escaping the data root, a bad language or threshold, an empty
or oversized batch) is answered with INVALID_ARGUMENT before any work. A valid request whose image
is missing or unreadable gets a STATUS_FAILURE response with ErrorInfo, as the seed does, so one
bad image does not end a batch. A missing engine is FAILED_PRECONDITION.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from grpclib.const import Status as GrpcStatus
from grpclib.exceptions import GRPCError

from gen.common.v1 import BoundingBox, ErrorInfo, Metadata, Status
from gen.ocr.v1 import (
    HealthCheckRequest,
    HealthCheckResponse,
    OcrBatchProgress,
    OcrBatchRequest,
    OcrRequest,
    OcrResponse,
    OcrServiceBase,
    TextBox,
)

from .engine import EngineUnavailable, ImageError, TesseractEngine, resolve_languages

SERVICE_NAME = "ocr.v1.OCRService"
DEFAULT_THRESHOLD = 0.5


def _invalid(message: str) -> GRPCError:
    return GRPCError(GrpcStatus.INVALID_ARGUMENT, message)


class OcrService(OcrServiceBase):
    def __init__(self, engine: TesseractEngine, data_root: Path, *, max_batch: int = 100) -> None:
        self.engine = engine
        self.data_root = data_root.resolve()
        self.max_batch = max_batch

    # --- validation --------------------------------------------------------------------

    def resolve_path(self, private_path: str, public_path: str, field: str) -> Path:
        raw = private_path or public_path
        if not raw:
            raise _invalid(f"{field}: an image path is required")
        if "\x00" in raw:
            raise _invalid(f"{field}: the image path contains a NUL byte")
        candidate = (self.data_root / raw).resolve()
        if not candidate.is_relative_to(self.data_root):
            raise _invalid(f"{field}: the image path {raw!r} is outside the data root")
        return candidate

    @staticmethod
    def _threshold(value: float) -> float:
        if math.isnan(value) or not 0.0 <= value <= 1.0:
            raise _invalid(f"confidence_threshold must be within [0, 1], got {value}")
        return value or DEFAULT_THRESHOLD

    @staticmethod
    def _languages(value: str) -> str:
        try:
            return resolve_languages(value)
        except ValueError as exc:
            raise _invalid(str(exc)) from None

    def _require_engine(self, languages: str) -> None:
        try:
            self.engine.require(languages)
        except EngineUnavailable as exc:
            raise GRPCError(GrpcStatus.FAILED_PRECONDITION, str(exc)) from None

    # --- work ----------------------------------------------------------------------------

    async def _ocr(
        self, path: Path, languages: str, threshold: float, angle: bool, shown: str
    ) -> OcrResponse:
        try:
            result = await self.engine.recognize(
                path, languages=languages, threshold=threshold, detect_orientation=angle
            )
        except FileNotFoundError:
            return _failure("IMAGE_NOT_FOUND", f"image not found: {shown}", "FileNotFoundError")
        except ImageError as exc:
            return _failure("INVALID_IMAGE", f"{shown}: {exc}", "ImageError")
        except EngineUnavailable as exc:
            raise GRPCError(GrpcStatus.FAILED_PRECONDITION, str(exc)) from None
        except RuntimeError as exc:
            return _failure("OCR_FAILED", f"{shown}: {exc}", "RuntimeError")
        return OcrResponse(
            status=Status.SUCCESS,
            text=result.text,
            overall_confidence=result.confidence,
            text_boxes=[
                TextBox(text=w.text, confidence=w.confidence, bbox=BoundingBox(coordinates=w.quad))
                for w in result.words
            ],
            metadata=Metadata(data=result.metadata),
        )

    # --- RPCs ----------------------------------------------------------------------------

    async def extract_text(self, message: OcrRequest) -> OcrResponse:
        path = self.resolve_path(
            message.private_image_path, message.public_image_path, "image_path"
        )
        threshold = self._threshold(message.confidence_threshold)
        languages = self._languages(message.language)
        self._require_engine(languages)
        shown = message.private_image_path or message.public_image_path
        return await self._ocr(path, languages, threshold, message.use_angle_cls, shown)

    async def extract_text_batch(self, message: OcrBatchRequest) -> AsyncIterator[OcrBatchProgress]:
        total = len(message.image_paths)
        if total == 0:
            raise _invalid("image_paths: at least one image is required")
        if total > self.max_batch:
            raise _invalid(f"image_paths: {total} images, the limit is {self.max_batch}")
        paths = [
            self.resolve_path(p.private_path, p.public_path, f"image_paths[{i}]")
            for i, p in enumerate(message.image_paths)
        ]
        threshold = self._threshold(message.confidence_threshold)
        languages = self._languages(message.language)
        self._require_engine(languages)
        batch_id = uuid.uuid4().hex
        for index, (path, image) in enumerate(zip(paths, message.image_paths, strict=True)):
            shown = image.private_path or image.public_path
            result = await self._ocr(path, languages, threshold, message.use_angle_cls, shown)
            yield OcrBatchProgress(
                batch_id=batch_id,
                total_images=total,
                processed_images=index + 1,
                current_result=result,
                progress_percentage=(index + 1) * 100.0 / total,
            )

    async def check_health(self, message: HealthCheckRequest) -> HealthCheckResponse:
        loaded = self.engine.available
        return HealthCheckResponse(
            status=Status.SUCCESS if loaded else Status.FAILURE,
            engine_type=self.engine.name,
            model_loaded=loaded,
            version=self.engine.version,
        )


def _failure(code: str, message: str, details: str) -> OcrResponse:
    return OcrResponse(
        status=Status.FAILURE, error=ErrorInfo(code=code, message=message, details=details)
    )
