"""What `grpcstack bench seed001` serves and calls: one OCR engine behind gRPC and HTTP/JSON.

* ``bench_engine()``: the engine BENCH_OCR_ENGINE names: ``rapidocr`` (the real one, one ONNX
  thread) or ``canned`` (a fixed 50-word result after no work, so the transport's cost shows).
* ``make_images(root, n)``: n text images drawn with a TrueType font (the same for both sides).
* ``OcrBenchServer``: grpcstack serving OCRService on that engine (full default chain; the
  response cache is off unless GRPC_CACHE_ENABLED says otherwise, so every call runs the engine,
  as every HTTP call does).
* ``grpc_caller``: the seed 001 worker's gRPC call (OcrClient.extract_text, grpcstack Client).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar

from grpcstack import AsyncBaseServer, ServerSettings

from .ocr.engine import OcrEngine, OcrResult, Word, build_engine
from .ocr.service import OcrService
from .settings import PlatformSettings

FONTS = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
)
LINES = (
    ("Invoice 2026-0042", "Total due: 1,250.00 EUR", "Pay within 30 days"),
    ("Strategy report", "SMA 20 crossed SMA 50", "RSI 14 below 70"),
    ("Shipping label", "Seoul 04524", "Parcel 3 of 5"),
    ("Meeting notes", "gRPC migration plan", "Phase 2 canary at 10%"),
)


class CannedEngine:
    """A fixed 50-word result with no OCR work: isolates the transport and codec."""

    name = "canned"
    version = "1"
    timeout = 120.0
    available = True
    unavailable_reason = ""

    def __init__(self) -> None:
        words = [
            Word(
                f"word{i}",
                0.5 + i / 100,
                (10.0 * i, 20.0, 10.0 * i + 40, 20.0, 10.0 * i + 40, 44.0, 10.0 * i, 44.0),
                i // 10,
            )
            for i in range(50)
        ]
        self.result = OcrResult(
            text=" ".join(w.text for w in words),
            confidence=0.93,
            words=words,
            metadata={"engine": "canned", "language": "en"},
        )

    async def probe(self) -> None:
        return None

    def resolve_languages(self, language: str) -> str:
        return language or "en"

    def require(self, languages: str) -> None:
        return None

    async def recognize(
        self, path: Path, *, languages: str, threshold: float, detect_orientation: bool
    ) -> OcrResult:
        if not path.exists():  # noqa: ASYNC240 - a stat, as the real engines do
            raise FileNotFoundError(path)
        return self.result


def bench_engine() -> OcrEngine:
    if os.environ.get("BENCH_OCR_ENGINE", "rapidocr") == "canned":
        return CannedEngine()
    return build_engine("rapidocr", max_concurrency=2, rapidocr_threads=1)


def make_images(root: Path, n: int = 4) -> list[str]:
    """Draw ``n`` text images under ``root``; return their paths relative to it."""
    from PIL import Image, ImageDraw, ImageFont

    font = next((f for f in FONTS if Path(f).exists()), None)
    if font is None:
        raise RuntimeError("no TrueType font (apt-get install fonts-dejavu-core)")
    face = ImageFont.truetype(font, 36)
    names = []
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        lines = LINES[i % len(LINES)]
        image = Image.new("L", (720, 60 * len(lines) + 60), color=255)
        draw = ImageDraw.Draw(image)
        for j, line in enumerate(lines):
            draw.text((30, 30 + j * 60), line, font=face, fill=0)
        name = f"scan{i}.png"
        image.save(root / name)
        names.append(name)
    return names


class OcrBenchServer(AsyncBaseServer):
    settings_class: ClassVar[type[ServerSettings]] = PlatformSettings
    settings: PlatformSettings

    async def before_start(self) -> None:
        self.engine = bench_engine()
        await self.engine.probe()
        self.ocr = OcrService(self.engine, self.settings.OCR_DATA_ROOT)

    def services(self) -> list[Any]:
        return [self.ocr]

    async def after_stop(self) -> None:
        close = getattr(self.engine, "close", None)
        if close is not None:
            close()


def _images() -> list[str]:
    return os.environ["BENCH_OCR_IMAGES"].split(",")


class _GrpcCaller:
    def __init__(self, port: int) -> None:
        from .ocr.client import OcrClient

        self.client = OcrClient(f"127.0.0.1:{port}")
        self.images = _images()
        self.last: Any = None

    async def call(self, i: int) -> str:
        from gen.common.v1 import Status

        reply = await self.client.extract_text(
            self.images[i % len(self.images)], language="en", timeout=300
        )
        self.last = reply
        return "OK" if reply.status == Status.SUCCESS else f"OCR_{reply.status.name}"

    def payload(self) -> dict[str, int]:
        """Bytes of one call's messages on the wire (5-byte gRPC prefix each), body only."""
        from gen.ocr.v1 import OcrRequest

        request = OcrRequest(
            private_image_path=self.images[0],
            language="en",
            confidence_threshold=0.5,
            use_angle_cls=True,
        )
        return {
            "request": 5 + len(bytes(request)),
            "response": 5 + len(bytes(self.last)) if self.last is not None else 0,
        }


@asynccontextmanager
async def grpc_caller(port: int) -> AsyncIterator[Any]:
    caller = _GrpcCaller(port)
    try:
        yield caller
    finally:
        caller.client.close()
