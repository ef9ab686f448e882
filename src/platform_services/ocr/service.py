"""OCRService (seed 001): ExtractText, ExtractTextBatch (progress stream), CheckHealth.

ExtractText is cached by the image's content hash (L1+L2): a changed file is a new key, an
unchanged one is answered from the cache without running the engine.

An invalid request (no path, a path escaping the data root, a bad language or threshold, an empty
or oversized batch) is answered with INVALID_ARGUMENT before any work. A valid request whose image
is missing or unreadable gets a STATUS_FAILURE response with ErrorInfo, as the seed does, so one
bad image does not end a batch. A missing engine is FAILED_PRECONDITION.
"""

from __future__ import annotations

import hashlib
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
from grpcstack.cache import cached

from .engine import EngineUnavailable, ImageError, OcrEngine

SERVICE_NAME = "ocr.v1.OCRService"
DEFAULT_THRESHOLD = 0.5
CACHE_TTL_SECONDS = 3600


def _invalid(message: str) -> GRPCError:
    return GRPCError(GrpcStatus.INVALID_ARGUMENT, message)


class OcrService(OcrServiceBase):
    def __init__(self, engine: OcrEngine, data_root: Path, *, max_batch: int = 100) -> None:
        self.engine = engine
        self.data_root = data_root.resolve()
        self.max_batch = max_batch
        self._hashes = _ContentHashes()
        self._failures: dict[Path, int] = {}

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

    def _languages(self, value: str) -> str:
        try:
            return self.engine.resolve_languages(value)
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
            self._failed(path)
            return _failure("OCR_FAILED", f"{shown}: {exc}", "RuntimeError")
        except TimeoutError as exc:
            self._failed(path)
            reason = str(exc) or f"recognition took longer than {self.engine.timeout:g}s"
            return _failure("OCR_FAILED", f"{shown}: {reason}", "TimeoutError")
        return OcrResponse(
            status=Status.SUCCESS,
            text=result.text,
            overall_confidence=result.confidence,
            text_boxes=[
                TextBox(
                    text=w.text,
                    confidence=w.confidence,
                    bbox=BoundingBox(coordinates=list(w.quad)),
                )
                for w in result.words
            ],
            metadata=Metadata(data=result.metadata),
        )

    def _failed(self, path: Path) -> None:
        if len(self._failures) >= 4096:
            self._failures.clear()
        self._failures[path] = self._failures.get(path, 0) + 1

    # --- RPCs ----------------------------------------------------------------------------

    def content_key(self, message: OcrRequest) -> str:
        """Cache key material: the request's options and the image's content hash."""
        try:
            path = self.resolve_path(message.private_image_path, message.public_image_path, "")
        except GRPCError:
            digest = "invalid"  # the handler answers INVALID_ARGUMENT, which is never cached
        else:
            digest = self._hashes.get(path)
            # a transient failure (OCR_FAILED) was cached under the old salt: the next call
            # gets a fresh key and runs the engine again
            digest = f"{digest}.{self._failures.get(path, 0)}"
        return (
            f"{digest}|{message.language}|{message.confidence_threshold!r}|{message.use_angle_cls}"
        )

    @cached(ttl=CACHE_TTL_SECONDS, tiers=("l1", "l2"), key=lambda svc, msg: svc.content_key(msg))
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


class _ContentHashes:
    """sha256 of image files, recomputed only when a file's size or mtime changes.

    The cache key is computed on the event loop: a hit costs one stat(), and reading the file
    happens only for a new or changed image (bounded by the images' size limit).
    """

    def __init__(self, limit: int = 4096) -> None:
        self._memo: dict[Path, tuple[int, int, str]] = {}
        self._limit = limit

    def get(self, path: Path) -> str:
        try:
            st = path.stat()
        except OSError:
            return "missing"
        memo = self._memo.get(path)
        if memo is not None and memo[:2] == (st.st_size, st.st_mtime_ns):
            return memo[2]
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            return "unreadable"
        if len(self._memo) >= self._limit:
            self._memo.pop(next(iter(self._memo)))
        self._memo[path] = (st.st_size, st.st_mtime_ns, digest)
        return digest
