"""What every OCR engine returns and shares: words with 4-point boxes, image checks, errors.

Two engines implement :class:`OcrEngine`: RapidOCR (the default; PaddleOCR's models on ONNX
Runtime, shipped inside the ``rapidocr-onnxruntime`` wheel, so it works on a fresh machine) and
Tesseract (``OCR_ENGINE=tesseract``; needs the system package and its language data).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from PIL import Image

EngineName = Literal["rapidocr", "tesseract"]


class EngineUnavailable(Exception):
    """The engine (or a language's model) is not installed."""


class ImageError(Exception):
    """The file is not a readable image within limits."""


@dataclass(frozen=True)
class Word:
    """A recognised word or text line: Tesseract gives words, RapidOCR gives lines."""

    text: str
    confidence: float  # 0..1
    quad: tuple[float, ...]  # clockwise from top left: x1, y1, x2, y2, x3, y3, x4, y4
    line: int  # index of the text line the word belongs to


@dataclass
class OcrResult:
    text: str
    confidence: float
    words: list[Word]
    metadata: dict[str, str] = field(default_factory=dict)


class OcrEngine(Protocol):
    name: str
    version: str
    timeout: float

    @property
    def available(self) -> bool: ...

    @property
    def unavailable_reason(self) -> str: ...

    async def probe(self) -> None:
        """Load the engine; stays unavailable (with a reason) when it cannot."""

    def resolve_languages(self, language: str) -> str:
        """The engine's code for a request's language; ValueError when malformed."""

    def require(self, languages: str) -> None:
        """EngineUnavailable unless the engine and the languages' models are there."""

    async def recognize(
        self, path: Path, *, languages: str, threshold: float, detect_orientation: bool
    ) -> OcrResult: ...


def rect_quad(left: float, top: float, width: float, height: float) -> tuple[float, ...]:
    right, bottom = left + width, top + height
    return (left, top, right, top, right, bottom, left, bottom)


def join_text(words: list[Word]) -> str:
    """Words of one line joined by spaces, lines by newlines."""
    lines: dict[int, list[str]] = {}
    for word in words:
        lines.setdefault(word.line, []).append(word.text)
    return "\n".join(" ".join(ws) for ws in lines.values())


def mean_confidence(words: list[Word]) -> float:
    return sum(w.confidence for w in words) / len(words) if words else 0.0


def check_image(path: Path, max_pixels: int) -> tuple[str, int, int]:
    """(format, width, height) of a real image; FileNotFoundError or ImageError otherwise."""
    if not path.is_file():
        raise FileNotFoundError(path)
    try:
        with Image.open(path) as img:
            fmt, (width, height) = img.format or "unknown", img.size
            if width * height > max_pixels:
                raise ImageError(f"image is {width}x{height}, over the {max_pixels} pixel limit")
            img.verify()
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(f"not a readable image: {exc}") from None
    return fmt, width, height


def build_engine(
    name: EngineName,
    *,
    tesseract_cmd: str = "tesseract",
    max_concurrency: int = 2,
    timeout: float = 120.0,
    max_pixels: int = 40_000_000,
    rapidocr_threads: int = 1,
) -> OcrEngine:
    """The engine OCR_ENGINE names (imported only when chosen)."""
    if name == "tesseract":
        from .tesseract import TesseractEngine

        return TesseractEngine(
            tesseract_cmd, max_concurrency=max_concurrency, timeout=timeout, max_pixels=max_pixels
        )
    from .rapid import RapidOcrEngine

    return RapidOcrEngine(
        max_concurrency=max_concurrency,
        timeout=timeout,
        max_pixels=max_pixels,
        threads=rapidocr_threads,
    )
