"""The OCR service on real Tesseract, through grpclib and grpcio clients."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from conftest import channel, running
from grpclib.const import Status as GrpcStatus
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest as HealthRequest
from grpclib.health.v1.health_pb2 import HealthCheckResponse as HealthResponse
from images import KOREAN_FONTS, find_font, text_image

from gen.common.v1 import Status
from gen.ocr.v1 import (
    HealthCheckRequest,
    ImagePath,
    OcrBatchRequest,
    OcrRequest,
    OcrServiceStub,
)
from platform_services.server import PlatformServer
from platform_services.settings import PlatformSettings

pytestmark = pytest.mark.skipif(
    shutil.which("tesseract") is None,
    reason="tesseract is not installed (apt-get install tesseract-ocr tesseract-ocr-kor)",
)


def platform(root: Path, **overrides: object) -> PlatformServer:
    values: dict[str, object] = {
        "GRPC_SERVER_HOST": "127.0.0.1",
        "GRPC_SERVER_PORT": 0,
        "GRPC_ENABLE_AUTH": False,
        "OCR_DATA_ROOT": root,
    }
    values.update(overrides)
    return PlatformServer(PlatformSettings(_env_file=None, **values))  # type: ignore[call-arg]


@pytest.fixture
def images(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    text_image(root / "hello.png", ["HELLO WORLD", "grpcstack 2026"])
    text_image(root / "invoice" / "total.png", ["TOTAL 1,234.50 USD"])
    (root / "not-an-image.png").write_bytes(b"this is text, not a PNG")
    (tmp_path / "secret.png").write_bytes((root / "hello.png").read_bytes())
    return root


@pytest.fixture
async def ocr(images: Path) -> AsyncIterator[PlatformServer]:
    server = platform(images)
    async with running(server):
        yield server


async def test_extract_text_grpclib(ocr: PlatformServer) -> None:
    async with channel(ocr) as ch:
        reply = await OcrServiceStub(ch).extract_text(
            OcrRequest(private_image_path="hello.png", language="english")
        )
    assert reply.status == Status.SUCCESS, reply.error
    assert "HELLO WORLD" in reply.text
    assert "grpcstack 2026" in reply.text
    assert reply.text.count("\n") == 1  # two lines
    assert 0.5 <= reply.overall_confidence <= 1.0
    words = [box.text for box in reply.text_boxes]
    assert words[:2] == ["HELLO", "WORLD"]
    hello = reply.text_boxes[0]
    x1, y1, x2, y2, x3, y3, x4, y4 = hello.bbox.coordinates
    assert (y1, x2, x4) == (y2, x3, x1) and (y3, x3) == (y4, x2) and x2 > x1 and y3 > y1
    assert 40 <= x1 <= 60  # the text was drawn 48 px from the left edge
    assert reply.metadata.data["engine"] == "tesseract"
    assert reply.metadata.data["language"] == "eng"


async def test_confidence_threshold_filters_words(ocr: PlatformServer) -> None:
    async with channel(ocr) as ch:
        stub = OcrServiceStub(ch)
        everything = await stub.extract_text(
            OcrRequest(private_image_path="hello.png", language="eng", confidence_threshold=0.0001)
        )
        nothing = await stub.extract_text(
            OcrRequest(private_image_path="hello.png", language="eng", confidence_threshold=1.0)
        )
    assert len(everything.text_boxes) >= 4
    assert all(box.confidence >= 0.0001 for box in everything.text_boxes)
    assert len(nothing.text_boxes) <= sum(b.confidence >= 1.0 for b in everything.text_boxes)


@pytest.mark.skipif(find_font(KOREAN_FONTS) is None, reason="no Korean font (fonts-nanum)")
async def test_korean_default_language(images: Path) -> None:
    text_image(images / "ko.png", ["안녕하세요 세계"], font=find_font(KOREAN_FONTS), size=64)
    server = platform(images)
    async with running(server), channel(server) as ch:
        reply = await OcrServiceStub(ch).extract_text(OcrRequest(public_image_path="ko.png"))
    assert reply.status == Status.SUCCESS, reply.error
    assert reply.metadata.data["language"] == "kor+eng"
    assert "안녕하세요" in reply.text.replace(" ", "") or "세계" in reply.text


async def test_extract_text_grpcio(ocr: PlatformServer, pb2) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ocr.port}") as ch:
        stub = pb2.ocr_grpc.OCRServiceStub(ch)
        reply = await stub.ExtractText(
            pb2.ocr.OCRRequest(public_image_path="invoice/total.png", language="eng"), timeout=60
        )
        assert reply.status == pb2.common.STATUS_SUCCESS
        assert "1,234.50" in reply.text and "TOTAL" in reply.text
        assert len(reply.text_boxes[0].bbox.coordinates) == 8
        progress = [
            p
            async for p in stub.ExtractTextBatch(
                pb2.ocr.OCRBatchRequest(
                    image_paths=[
                        pb2.ocr.ImagePath(private_path="hello.png"),
                        pb2.ocr.ImagePath(public_path="invoice/total.png"),
                    ],
                    language="eng",
                ),
                timeout=60,
            )
        ]
        assert [p.progress_percentage for p in progress] == [50.0, 100.0]
        assert "TOTAL" in progress[1].current_result.text


async def test_batch_streams_progress_and_reports_bad_images(ocr: PlatformServer) -> None:
    request = OcrBatchRequest(
        image_paths=[
            ImagePath(private_path="hello.png"),
            ImagePath(private_path="missing.png"),
            ImagePath(private_path="not-an-image.png"),
            ImagePath(public_path="invoice/total.png"),
        ],
        language="eng",
    )
    async with channel(ocr) as ch:
        progress = [p async for p in OcrServiceStub(ch).extract_text_batch(request)]
    assert [p.processed_images for p in progress] == [1, 2, 3, 4]
    assert [p.total_images for p in progress] == [4] * 4
    assert [p.progress_percentage for p in progress] == [25.0, 50.0, 75.0, 100.0]
    assert len({p.batch_id for p in progress}) == 1
    results = [p.current_result for p in progress]
    assert results[0].status == Status.SUCCESS and "HELLO" in results[0].text
    assert results[1].status == Status.FAILURE and results[1].error.code == "IMAGE_NOT_FOUND"
    assert results[2].status == Status.FAILURE and results[2].error.code == "INVALID_IMAGE"
    assert "TOTAL" in results[3].text


@pytest.mark.parametrize(
    ("request_", "fragment"),
    [
        (OcrRequest(), "an image path is required"),
        (OcrRequest(private_image_path="../secret.png"), "outside the data root"),
        (OcrRequest(private_image_path="/etc/passwd"), "outside the data root"),
        (OcrRequest(private_image_path="hello.png", confidence_threshold=1.5), "within [0, 1]"),
        (OcrRequest(private_image_path="hello.png", language="../x"), "not a known name"),
    ],
)
async def test_invalid_requests(ocr: PlatformServer, request_: OcrRequest, fragment: str) -> None:
    async with channel(ocr) as ch:
        with pytest.raises(GRPCError) as err:
            await OcrServiceStub(ch).extract_text(request_)
    assert err.value.status is GrpcStatus.INVALID_ARGUMENT
    assert fragment in (err.value.message or "")


async def test_invalid_batches(ocr: PlatformServer) -> None:
    async with channel(ocr) as ch:
        stub = OcrServiceStub(ch)
        for request, fragment in [
            (OcrBatchRequest(), "at least one image"),
            (
                OcrBatchRequest(
                    image_paths=[
                        ImagePath(private_path="hello.png"),
                        ImagePath(private_path="../../etc/passwd"),
                    ]
                ),
                "image_paths[1]",
            ),
            (OcrBatchRequest(image_paths=[ImagePath(private_path="hello.png")] * 101), "limit"),
        ]:
            with pytest.raises(GRPCError) as err:
                [p async for p in stub.extract_text_batch(request)]
            assert err.value.status is GrpcStatus.INVALID_ARGUMENT
            assert fragment in (err.value.message or "")


async def test_missing_language_data_is_failed_precondition(ocr: PlatformServer) -> None:
    async with channel(ocr) as ch:
        with pytest.raises(GRPCError) as err:
            await OcrServiceStub(ch).extract_text(
                OcrRequest(private_image_path="hello.png", language="fra")
            )
    assert err.value.status is GrpcStatus.FAILED_PRECONDITION
    assert "tesseract-ocr-fra" in (err.value.message or "")


async def test_check_health_reports_engine(ocr: PlatformServer) -> None:
    async with channel(ocr) as ch:
        reply = await OcrServiceStub(ch).check_health(HealthCheckRequest(service_name="ocr"))
    assert reply.status == Status.SUCCESS
    assert reply.engine_type == "tesseract" and reply.model_loaded
    assert reply.version.startswith(("4.", "5."))


async def test_without_tesseract_the_service_starts_not_serving(images: Path) -> None:
    server = platform(images, OCR_TESSERACT_CMD="tesseract-not-installed")
    async with running(server), channel(server) as ch:
        health = HealthStub(ch)
        status = await health.Check(HealthRequest(service="ocr.v1.OCRService"))
        assert status.status == HealthResponse.NOT_SERVING
        stub = OcrServiceStub(ch)
        with pytest.raises(GRPCError) as err:
            await stub.extract_text(OcrRequest(private_image_path="hello.png"))
        assert err.value.status is GrpcStatus.FAILED_PRECONDITION
        assert "apt-get install tesseract-ocr" in (err.value.message or "")
        reply = await stub.check_health(HealthCheckRequest())
        assert reply.status == Status.FAILURE and not reply.model_loaded
