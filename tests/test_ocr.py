"""The OCR service on real engines: RapidOCR (the default, models in the wheel: always runs) and
Tesseract (OCR_ENGINE=tesseract: runs where it is installed), through grpclib and grpcio."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from conftest import channel
from grpclib.const import Status as GrpcStatus
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest as HealthRequest
from grpclib.health.v1.health_pb2 import HealthCheckResponse as HealthResponse
from images import KOREAN_FONTS, find_font, text_image
from PIL import Image
from platform_util import cache_count, loads, platform_settings, user

from gen.common.v1 import Status
from gen.ocr.v1 import (
    HealthCheckRequest,
    ImagePath,
    OcrBatchRequest,
    OcrRequest,
    OcrServiceStub,
)
from grpcstack.testing import serve
from platform_services.ocr.rapid import RapidOcrEngine
from platform_services.server import PlatformServer

pytestmark = pytest.mark.asyncio(loop_scope="module")
needs_tesseract = pytest.mark.skipif(
    shutil.which("tesseract") is None,
    reason="tesseract is not installed (apt-get install tesseract-ocr tesseract-ocr-kor)",
)
ME = user("alice")
EXTRACT = "/ocr.v1.OCRService/ExtractText"
PAGES = ["ALPHA", "BRAVO", "CHARLIE"]


def draw_images(root: Path) -> Path:
    text_image(root / "hello.png", ["HELLO WORLD", "grpcstack 2026"])
    text_image(root / "invoice" / "total.png", ["TOTAL 1,234.50 USD"])
    with Image.open(root / "hello.png") as img:
        img.rotate(180).save(root / "upside-down.png")
    for i, word in enumerate(PAGES):
        text_image(root / f"page{i}.png", [f"PAGE {word}"])
    (root / "not-an-image.png").write_bytes(b"this is text, not a PNG")
    (root.parent / "secret.png").write_bytes((root / "hello.png").read_bytes())
    return root


def ocr_platform(root: Path, **overrides: Any) -> PlatformServer:
    """The platform with OCR_DATA_ROOT = root/images (an OCR test reads only OCR)."""
    return PlatformServer(platform_settings(root, **overrides))


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ocr")
    draw_images(root / "images")
    return root


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def ocr(root: Path) -> AsyncIterator[PlatformServer]:
    server = ocr_platform(root)
    async with serve(server):
        yield server


@pytest_asyncio.fixture(loop_scope="module")
async def stub(ocr: PlatformServer) -> AsyncIterator[OcrServiceStub]:
    async with channel(ocr) as ch:
        yield OcrServiceStub(ch)


# --- RapidOCR (the default engine) -----------------------------------------------------------


async def test_extract_text_rapidocr(stub: OcrServiceStub) -> None:
    reply = await stub.extract_text(OcrRequest(private_image_path="hello.png"), metadata=ME)
    assert reply.status == Status.SUCCESS, reply.error
    assert reply.text.splitlines() == ["HELLO WORLD", "grpcstack 2026"]
    assert 0.9 <= reply.overall_confidence <= 1.0
    hello = reply.text_boxes[0]
    assert hello.text == "HELLO"
    x1, y1, x2, y2, x3, y3, x4, y4 = hello.bbox.coordinates  # 4 points, clockwise from top left
    assert x2 > x1 and x3 > x4 and y4 > y1 and y3 > y2
    assert 40 <= x1 <= 60  # the text was drawn 48 px from the left edge
    data = reply.metadata.data
    assert data["engine"] == "rapidocr" and data["language"] == "ch+en"


async def test_confidence_threshold_keeps_exactly_the_boxes_above_it(
    stub: OcrServiceStub,
) -> None:
    everything = await stub.extract_text(
        OcrRequest(private_image_path="hello.png", confidence_threshold=0.0001), metadata=ME
    )
    confidences = sorted(b.confidence for b in everything.text_boxes)
    assert len(confidences) >= 3 and confidences[0] < confidences[-1]
    threshold = (confidences[0] + confidences[-1]) / 2
    some = await stub.extract_text(
        OcrRequest(private_image_path="hello.png", confidence_threshold=threshold), metadata=ME
    )
    expected = [b.text for b in everything.text_boxes if b.confidence >= threshold]
    assert [b.text for b in some.text_boxes] == expected
    assert 0 < len(expected) < len(everything.text_boxes)
    assert all(b.confidence >= threshold for b in some.text_boxes)


async def test_use_angle_cls_reads_upside_down_text(stub: OcrServiceStub) -> None:
    turned = await stub.extract_text(
        OcrRequest(private_image_path="upside-down.png", use_angle_cls=True), metadata=ME
    )
    assert turned.metadata.data["angle_classifier"] == "on"
    assert "HELLO WORLD" in turned.text and "grpcstack 2026" in turned.text
    plain = await stub.extract_text(
        OcrRequest(private_image_path="upside-down.png", use_angle_cls=False), metadata=ME
    )
    assert "HELLO" not in plain.text and "grpcstack" not in plain.text


async def test_results_are_cached_by_image_content(
    ocr: PlatformServer, stub: OcrServiceStub, root: Path
) -> None:
    path = root / "images" / "changing.png"
    text_image(path, ["FIRST"])
    request = OcrRequest(private_image_path="changing.png")
    before, hits = loads(ocr, EXTRACT), cache_count(ocr, "hits", EXTRACT, "l1")
    first = await stub.extract_text(request, metadata=ME)
    again = await stub.extract_text(request, metadata=ME)
    assert first == again and "FIRST" in first.text
    assert loads(ocr, EXTRACT) == before + 1
    assert cache_count(ocr, "hits", EXTRACT, "l1") == hits + 1
    text_image(path, ["SECOND"])  # same path, new content: a new key, never the old answer
    second = await stub.extract_text(request, metadata=ME)
    assert "SECOND" in second.text
    assert loads(ocr, EXTRACT) == before + 2


async def test_languages_outside_the_bundled_models(stub: OcrServiceStub) -> None:
    with pytest.raises(GRPCError) as err:
        await stub.extract_text(
            OcrRequest(private_image_path="hello.png", language="korean"), metadata=ME
        )
    assert err.value.status is GrpcStatus.FAILED_PRECONDITION
    assert "OCR_ENGINE=tesseract" in (err.value.message or "")
    english = await stub.extract_text(
        OcrRequest(private_image_path="hello.png", language="english"), metadata=ME
    )
    assert english.metadata.data["language"] == "en" and "HELLO" in english.text


async def test_batch_streams_progress_and_reports_bad_images(stub: OcrServiceStub) -> None:
    request = OcrBatchRequest(
        image_paths=[
            ImagePath(private_path="hello.png"),
            ImagePath(private_path="missing.png"),
            ImagePath(private_path="not-an-image.png"),
            ImagePath(public_path="invoice/total.png"),
        ],
    )
    progress = [p async for p in stub.extract_text_batch(request, metadata=ME)]
    assert [p.processed_images for p in progress] == [1, 2, 3, 4]
    assert [p.total_images for p in progress] == [4] * 4
    assert [p.progress_percentage for p in progress] == [25.0, 50.0, 75.0, 100.0]
    assert len({p.batch_id for p in progress}) == 1
    results = [p.current_result for p in progress]
    assert results[0].status == Status.SUCCESS and "HELLO" in results[0].text
    assert results[1].status == Status.FAILURE and results[1].error.code == "IMAGE_NOT_FOUND"
    assert results[2].status == Status.FAILURE and results[2].error.code == "INVALID_IMAGE"
    assert "TOTAL" in results[3].text and "1,234.50" in results[3].text


@pytest.mark.parametrize(
    ("request_", "fragment"),
    [
        (OcrRequest(), "an image path is required"),
        (OcrRequest(private_image_path="../secret.png"), "outside the data root"),
        (OcrRequest(private_image_path="/etc/passwd"), "outside the data root"),
        (OcrRequest(private_image_path="a\x00b"), "NUL byte"),
        (OcrRequest(private_image_path="hello.png", confidence_threshold=1.5), "within [0, 1]"),
        (OcrRequest(private_image_path="hello.png", confidence_threshold=float("nan")), "[0, 1]"),
        (OcrRequest(private_image_path="hello.png", language="../x"), "not a known name"),
    ],
)
async def test_invalid_requests(stub: OcrServiceStub, request_: OcrRequest, fragment: str) -> None:
    with pytest.raises(GRPCError) as err:
        await stub.extract_text(request_, metadata=ME)
    assert err.value.status is GrpcStatus.INVALID_ARGUMENT
    assert fragment in (err.value.message or "")


async def test_invalid_batches(stub: OcrServiceStub) -> None:
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
            [p async for p in stub.extract_text_batch(request, metadata=ME)]
        assert err.value.status is GrpcStatus.INVALID_ARGUMENT
        assert fragment in (err.value.message or "")


async def test_check_health_reports_engine(stub: OcrServiceStub) -> None:
    reply = await stub.check_health(HealthCheckRequest(service_name="ocr"), metadata=ME)
    assert reply.status == Status.SUCCESS
    assert reply.engine_type == "rapidocr" and reply.model_loaded
    assert reply.version.count(".") >= 2


async def test_extract_text_grpcio(ocr: PlatformServer, pb2: Any) -> None:
    md = (("user-id", "alice"),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ocr.port}") as ch:
        stub = pb2.ocr_grpc.OCRServiceStub(ch)
        reply = await stub.ExtractText(
            pb2.ocr.OCRRequest(public_image_path="invoice/total.png"), metadata=md, timeout=60
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
                ),
                metadata=md,
                timeout=60,
            )
        ]
        assert [p.progress_percentage for p in progress] == [50.0, 100.0]
        assert "TOTAL" in progress[1].current_result.text


# --- limits: concurrency, timeout, image size -------------------------------------------------


@pytest.mark.parametrize("limit", [1, 2])
async def test_concurrency_is_bounded(root: Path, tmp_path: Path, limit: int) -> None:
    server = PlatformServer(
        platform_settings(tmp_path, OCR_DATA_ROOT=root / "images", OCR_MAX_CONCURRENCY=limit)
    )
    async with serve(server), channel(server) as ch:
        stub = OcrServiceStub(ch)
        replies = await asyncio.gather(
            *(
                stub.extract_text(OcrRequest(private_image_path=f"page{i}.png"), metadata=ME)
                for i in range(3)
            )
        )
        engine = server.ocr_engine
        assert isinstance(engine, RapidOcrEngine)
        # three calls at once on `limit` workers: never more ran together, and the bound is
        # what held them back (with 2 workers, two did run together)
        assert engine.peak_running == limit
    assert [r.text for r in replies] == [f"PAGE {word}" for word in PAGES]


async def test_timeout_is_ocr_failed_and_not_cached(root: Path, tmp_path: Path) -> None:
    server = PlatformServer(
        platform_settings(tmp_path, OCR_DATA_ROOT=root / "images", OCR_TIMEOUT_SECONDS=0.001)
    )
    async with serve(server), channel(server) as ch:
        stub = OcrServiceStub(ch)
        request = OcrRequest(private_image_path="hello.png")
        for attempt in (1, 2):
            reply = await stub.extract_text(request, metadata=ME)
            assert reply.status == Status.FAILURE
            assert reply.error.code == "OCR_FAILED"
            assert "longer than 0.001s" in reply.error.message
            # a transient failure is not served from the cache: each call ran the engine
            assert loads(server, EXTRACT) == attempt


async def test_images_over_the_pixel_limit(root: Path, tmp_path: Path) -> None:
    server = PlatformServer(
        platform_settings(tmp_path, OCR_DATA_ROOT=root / "images", OCR_MAX_IMAGE_PIXELS=10_000)
    )
    async with serve(server), channel(server) as ch:
        reply = await OcrServiceStub(ch).extract_text(
            OcrRequest(private_image_path="hello.png"), metadata=ME
        )
    assert reply.status == Status.FAILURE and reply.error.code == "INVALID_IMAGE"
    assert "over the 10000 pixel limit" in reply.error.message


async def test_an_unavailable_engine_is_not_serving(root: Path, tmp_path: Path) -> None:
    server = PlatformServer(
        platform_settings(
            tmp_path,
            OCR_DATA_ROOT=root / "images",
            OCR_ENGINE="tesseract",
            OCR_TESSERACT_CMD="tesseract-not-installed",
        )
    )
    async with serve(server), channel(server) as ch:
        health = HealthStub(ch)
        status = await health.Check(HealthRequest(service="ocr.v1.OCRService"))
        assert status.status == HealthResponse.NOT_SERVING
        # the other services are unaffected; the overall status reports the degradation
        other = await health.Check(HealthRequest(service="strategy.v1.StrategyService"))
        assert other.status == HealthResponse.SERVING
        overall = await health.Check(HealthRequest(service=""))
        assert overall.status == HealthResponse.NOT_SERVING
        stub = OcrServiceStub(ch)
        with pytest.raises(GRPCError) as err:
            await stub.extract_text(OcrRequest(private_image_path="hello.png"), metadata=ME)
        assert err.value.status is GrpcStatus.FAILED_PRECONDITION
        assert "apt-get install tesseract-ocr" in (err.value.message or "")
        reply = await stub.check_health(HealthCheckRequest(), metadata=ME)
        assert reply.status == Status.FAILURE and not reply.model_loaded


# --- Tesseract (OCR_ENGINE=tesseract), where installed ----------------------------------------


@pytest_asyncio.fixture(loop_scope="module")
async def tesseract(root: Path, tmp_path: Path) -> AsyncIterator[PlatformServer]:
    server = PlatformServer(
        platform_settings(tmp_path, OCR_DATA_ROOT=root / "images", OCR_ENGINE="tesseract")
    )
    async with serve(server):
        yield server


@needs_tesseract
async def test_extract_text_tesseract(tesseract: PlatformServer) -> None:
    async with channel(tesseract) as ch:
        reply = await OcrServiceStub(ch).extract_text(
            OcrRequest(private_image_path="hello.png", language="english"), metadata=ME
        )
    assert reply.status == Status.SUCCESS, reply.error
    assert reply.text.splitlines() == ["HELLO WORLD", "grpcstack 2026"]
    assert [box.text for box in reply.text_boxes][:2] == ["HELLO", "WORLD"]
    x1, y1, x2, y2, x3, y3, x4, y4 = reply.text_boxes[0].bbox.coordinates
    assert (y1, x2, x4) == (y2, x3, x1) and (y3, x3) == (y4, x2) and x2 > x1 and y3 > y1
    assert reply.metadata.data["engine"] == "tesseract"
    assert reply.metadata.data["language"] == "eng"


@needs_tesseract
@pytest.mark.skipif(find_font(KOREAN_FONTS) is None, reason="no Korean font (fonts-nanum)")
async def test_tesseract_korean_default_language(root: Path, tesseract: PlatformServer) -> None:
    text_image(
        root / "images" / "ko.png", ["안녕하세요 세계"], font=find_font(KOREAN_FONTS), size=64
    )
    async with channel(tesseract) as ch:
        reply = await OcrServiceStub(ch).extract_text(
            OcrRequest(public_image_path="ko.png"), metadata=ME
        )
    assert reply.status == Status.SUCCESS, reply.error
    assert reply.metadata.data["language"] == "kor+eng"
    assert "안녕하세요" in reply.text.replace(" ", "") or "세계" in reply.text


@needs_tesseract
async def test_tesseract_missing_language_data(tesseract: PlatformServer) -> None:
    async with channel(tesseract) as ch:
        with pytest.raises(GRPCError) as err:
            await OcrServiceStub(ch).extract_text(
                OcrRequest(private_image_path="hello.png", language="fra"), metadata=ME
            )
    assert err.value.status is GrpcStatus.FAILED_PRECONDITION
    assert "tesseract-ocr-fra" in (err.value.message or "")
