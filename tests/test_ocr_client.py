"""OcrClient (seed 001's worker client) against the real OCR service on real Tesseract."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import bound_socket, running
from grpclib.const import Status as GrpcStatus
from test_ocr import images, platform  # noqa: F401 - fixtures

from gen.common.v1 import Status
from gen.ocr.v1 import OcrBatchProgress
from platform_services.ocr.client import (
    OcrClient,
    PermanentOcrError,
    RetryableOcrError,
    get_ocr_client,
    reset_ocr_client,
)
from platform_services.server import PlatformServer
from platform_services.settings import OcrClientSettings

needs_tesseract = pytest.mark.skipif(
    shutil.which("tesseract") is None, reason="tesseract is not installed"
)


def ocr_settings(port: int, **overrides: object) -> OcrClientSettings:
    return OcrClientSettings(  # type: ignore[call-arg]
        _env_file=None, OCR_GRPC_HOST="127.0.0.1", OCR_GRPC_PORT=port, **overrides
    )


@pytest.fixture
async def ocr_server(images: Path) -> AsyncIterator[PlatformServer]:  # noqa: F811
    server = platform(images, GRPC_ENABLE_RATE_LIMITING=False)
    async with running(server):
        yield server


@needs_tesseract
async def test_extract_text_and_health(ocr_server: PlatformServer) -> None:
    async with OcrClient(settings=ocr_settings(ocr_server.port or 0)) as client:
        reply = await client.extract_text("hello.png", language="english")
        assert reply.status == Status.SUCCESS, reply.error
        assert "HELLO WORLD" in reply.text
        missing = await client.extract_text("nope.png", language="english")
        assert missing.status == Status.FAILURE  # per-image failure, the call itself is OK
        health = await client.check_health()
        assert health.model_loaded and health.engine_type


@needs_tesseract
async def test_batch_iterates_the_progress_stream_with_a_callback(
    ocr_server: PlatformServer,
) -> None:
    seen: list[tuple[int, int, float]] = []

    async def on_progress(progress: OcrBatchProgress) -> None:
        seen.append(
            (progress.processed_images, progress.total_images, progress.progress_percentage)
        )

    async with OcrClient(settings=ocr_settings(ocr_server.port or 0)) as client:
        results = await client.extract_text_batch(
            ["hello.png", "invoice/total.png", "not-an-image.png"],
            language="english",
            on_progress=on_progress,
        )
    assert [r.status for r in results] == [Status.SUCCESS, Status.SUCCESS, Status.FAILURE]
    assert "TOTAL" in results[1].text
    assert [s[:2] for s in seen] == [(1, 3), (2, 3), (3, 3)]
    assert seen[-1][2] == pytest.approx(100.0)


async def test_invalid_requests_are_permanent_failures(images: Path) -> None:  # noqa: F811
    server = platform(images, GRPC_ENABLE_RATE_LIMITING=False)
    async with running(server):
        async with OcrClient(settings=ocr_settings(server.port or 0)) as client:
            with pytest.raises(PermanentOcrError) as err:
                await client.extract_text("")
            assert err.value.status is GrpcStatus.INVALID_ARGUMENT and not err.value.retryable
            with pytest.raises(PermanentOcrError) as err:
                await client.extract_text("../secret.png", language="english")
            assert err.value.status is GrpcStatus.INVALID_ARGUMENT
            with pytest.raises(PermanentOcrError):
                await client.extract_text_batch([], language="english")


async def test_unavailable_and_deadline_are_retryable(images: Path) -> None:  # noqa: F811
    sock = bound_socket()
    port = sock.getsockname()[1]
    sock.close()
    s = ocr_settings(port, GRPC_CLIENT_RETRY_MAX_ATTEMPTS=1)
    async with OcrClient(settings=s) as client:
        with pytest.raises(RetryableOcrError) as err:
            await client.extract_text("hello.png")
        assert err.value.status is GrpcStatus.UNAVAILABLE and err.value.retryable
    server = platform(images, GRPC_ENABLE_RATE_LIMITING=False)
    async with running(server):
        async with OcrClient(settings=ocr_settings(server.port or 0)) as client:
            with pytest.raises(RetryableOcrError) as err:
                # a whole batch cannot finish in a millisecond
                await client.extract_text_batch(
                    ["hello.png"] * 5, language="english", timeout=0.001
                )
            assert err.value.status is GrpcStatus.DEADLINE_EXCEEDED


def test_process_wide_client_reads_the_seed_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OCR_GRPC_HOST", "127.0.0.1")
    monkeypatch.setenv("OCR_GRPC_PORT", "50123")
    monkeypatch.setenv("OCR_GRPC_TIMEOUT", "42.5")
    reset_ocr_client()
    try:
        client = get_ocr_client()
        assert get_ocr_client() is client
        assert client.timeout == 42.5
        assert client.client.targets == ["127.0.0.1:50123"]
    finally:
        reset_ocr_client()
