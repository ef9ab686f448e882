"""OcrClient: the seed 001 Celery worker's client of the OCR service, on grpcstack.Client.

::

    client = get_ocr_client()          # process-wide, from OCR_GRPC_HOST / _PORT / _TIMEOUT
    try:
        reply = await client.extract_text("scans/a.png")
    except RetryableOcrError:          # UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED
        raise RetryableError("OCRStage", ...)   # the pipeline retries the task later
    except PermanentOcrError:          # INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION ...
        ...                            # no retry will help

A reply whose ``status`` is not SUCCESS is a per-image failure (missing or unreadable image) the
service reports without failing the call, as the seed's service does.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from grpclib.const import Status
from grpclib.exceptions import GRPCError

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
from grpcstack.client import Client

from ..settings import OcrClientSettings

#: worth retrying later (the seed's OCRStage raises RetryableError for these)
RETRYABLE = frozenset({Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED, Status.RESOURCE_EXHAUSTED})

Progress = Callable[[OcrBatchProgress], Awaitable[None] | None]


class OcrError(Exception):
    """A failed OCR call; ``status`` is the gRPC status."""

    retryable = False

    def __init__(self, status: Status, message: str | None) -> None:
        super().__init__(f"OCR call failed with {status.name}: {message or ''}")
        self.status = status
        self.message = message


class RetryableOcrError(OcrError):
    retryable = True


class PermanentOcrError(OcrError):
    pass


def classify(error: GRPCError) -> OcrError:
    cls = RetryableOcrError if error.status in RETRYABLE else PermanentOcrError
    return cls(error.status, error.message)


def _image(item: str | ImagePath | tuple[str, str]) -> ImagePath:
    if isinstance(item, ImagePath):
        return item
    if isinstance(item, tuple):
        return ImagePath(public_path=item[0], private_path=item[1])
    return ImagePath(private_path=item)


class OcrClient:
    def __init__(
        self, target: str | None = None, *, settings: OcrClientSettings | None = None
    ) -> None:
        s = settings if settings is not None else OcrClientSettings()
        self.settings = s
        self.timeout = s.OCR_GRPC_TIMEOUT
        self.client = Client(target or f"{s.OCR_GRPC_HOST}:{s.OCR_GRPC_PORT}", settings=s)
        self.stub = self.client.stub(OcrServiceStub)

    async def __aenter__(self) -> OcrClient:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()

    async def extract_text(
        self,
        private_image_path: str = "",
        public_image_path: str = "",
        *,
        language: str = "korean",
        confidence_threshold: float = 0.5,
        use_angle_cls: bool = True,
        timeout: float | None = None,  # noqa: ASYNC109 - the seed client's API
    ) -> OcrResponse:
        request = OcrRequest(
            public_image_path=public_image_path,
            private_image_path=private_image_path,
            language=language,
            confidence_threshold=confidence_threshold,
            use_angle_cls=use_angle_cls,
        )
        try:
            return await self.stub.extract_text(request, timeout=timeout or self.timeout)
        except GRPCError as exc:
            raise classify(exc) from exc

    async def extract_text_batch(
        self,
        images: Sequence[str | ImagePath | tuple[str, str]],
        *,
        language: str = "korean",
        confidence_threshold: float = 0.5,
        use_angle_cls: bool = True,
        on_progress: Progress | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the seed client's API
    ) -> list[OcrResponse]:
        """Every image's result, in order, iterating the server's progress stream;
        ``on_progress`` (plain or async) sees each progress message as it arrives."""
        request = OcrBatchRequest(
            image_paths=[_image(i) for i in images],
            language=language,
            confidence_threshold=confidence_threshold,
            use_angle_cls=use_angle_cls,
        )
        results: list[OcrResponse] = []
        try:
            async for progress in self.stub.extract_text_batch(
                request, timeout=timeout or self.timeout
            ):
                if progress.current_result is not None:
                    results.append(progress.current_result)
                if on_progress is not None:
                    outcome = on_progress(progress)
                    if inspect.isawaitable(outcome):
                        await outcome
        except GRPCError as exc:
            raise classify(exc) from exc
        return results

    async def check_health(
        self,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the seed client's API
    ) -> HealthCheckResponse:
        try:
            return await self.stub.check_health(
                HealthCheckRequest(service_name="OCRService"), timeout=timeout or 10.0
            )
        except GRPCError as exc:
            raise classify(exc) from exc


_client: OcrClient | None = None


def get_ocr_client() -> OcrClient:
    """The process-wide OcrClient, configured from the environment on first use."""
    global _client
    if _client is None:
        _client = OcrClient()
    return _client


def reset_ocr_client() -> None:
    """Close and forget the process-wide client (tests, or after a fork)."""
    global _client
    if _client is not None:
        _client.close()
        _client = None
