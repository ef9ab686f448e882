"""RapidOCR: PaddleOCR's detection, angle and recognition models on ONNX Runtime.

The models ship inside the ``rapidocr-onnxruntime`` wheel (Chinese and English recognition), so
this engine works on a machine with no system packages. Inference runs on a pool of
``max_concurrency`` worker threads, each with its own engine instance. ONNX Runtime cannot be
interrupted: a recognition that exceeds ``timeout`` is answered as failed at once but keeps its
worker busy until it ends, so the concurrency bound holds.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

from .engine import (
    EngineUnavailable,
    OcrResult,
    Word,
    check_image,
    join_text,
    mean_confidence,
)

# Request language names to the bundled models' languages (they read both at once).
LANGUAGE_ALIASES = {
    "": "ch+en",
    "ch+en": "ch+en",
    "en": "en",
    "eng": "en",
    "english": "en",
    "ch": "ch",
    "zh": "ch",
    "chinese": "ch",
    "chi_sim": "ch",
}
SUPPORTED = frozenset({"ch", "en"})
INSTALL_HINT = "pip install rapidocr-onnxruntime (or: make setup)"


class RapidOcrEngine:
    name = "rapidocr"

    def __init__(
        self,
        *,
        max_concurrency: int = 2,
        timeout: float = 120.0,
        max_pixels: int = 40_000_000,
        threads: int = 1,
    ) -> None:
        self.timeout = timeout
        self.threads = threads
        self.max_pixels = max_pixels
        self.max_concurrency = max_concurrency
        self.version = ""
        self._error = "not loaded yet"
        self._local = threading.local()
        self._pool: ThreadPoolExecutor | None = None
        self._running = 0
        self._count_lock = threading.Lock()
        #: the most recognitions that ever ran at once (never above max_concurrency)
        self.peak_running = 0

    @property
    def available(self) -> bool:
        return not self._error

    @property
    def unavailable_reason(self) -> str:
        return f"the OCR engine is not available: {self._error}" if self._error else ""

    async def probe(self) -> None:
        try:
            self.version = metadata.version("rapidocr-onnxruntime")
        except metadata.PackageNotFoundError:
            self._error = f"rapidocr-onnxruntime is not installed ({INSTALL_HINT})"
            return
        self._pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="rapidocr")
        try:
            # loads the models in a worker (1-2 s), so the first call does not pay for it
            await asyncio.get_running_loop().run_in_executor(self._pool, self._engine)
        except Exception as exc:
            self._error = f"loading RapidOCR's models failed: {exc!r}"
            return
        self._error = ""

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def resolve_languages(self, language: str) -> str:
        name = (language or "").strip().lower()
        if name in LANGUAGE_ALIASES:
            return LANGUAGE_ALIASES[name]
        parts = name.split("+")
        if not all(p.isalpha() or "_" in p for p in parts) or len(name) > 32:
            raise ValueError(f"language {language!r} is not a known name or language code")
        return name

    def require(self, languages: str) -> None:
        if not self.available:
            raise EngineUnavailable(self.unavailable_reason)
        missing = [p for p in languages.split("+") if p not in SUPPORTED]
        if missing:
            raise EngineUnavailable(
                f"RapidOCR's bundled models read Chinese and English only, not {'+'.join(missing)}:"
                " serve with OCR_ENGINE=tesseract and its language data for other languages"
            )

    def _engine(self) -> Any:
        engine = getattr(self._local, "engine", None)
        if engine is None:
            from rapidocr_onnxruntime import RapidOCR

            # ONNX Runtime threads per worker: with its default (every core, per session) the
            # workers oversubscribe the CPU and each call gets slower, not faster
            kwargs = {"intra_op_num_threads": self.threads, "inter_op_num_threads": 1}
            engine = self._local.engine = RapidOCR(**(kwargs if self.threads > 0 else {}))
        return engine

    def _recognize(self, path: Path, use_cls: bool, threshold: float) -> list[Any]:
        with self._count_lock:
            self._running += 1
            self.peak_running = max(self.peak_running, self._running)
        try:
            result, _ = self._engine()(str(path), use_cls=use_cls, text_score=threshold)
            return list(result or [])
        except Exception as exc:  # ONNX Runtime / OpenCV errors: reported as OCR_FAILED
            raise RuntimeError(f"RapidOCR failed: {exc}") from None
        finally:
            with self._count_lock:
                self._running -= 1

    async def recognize(
        self, path: Path, *, languages: str, threshold: float, detect_orientation: bool
    ) -> OcrResult:
        self.require(languages)
        fmt, width, height = await asyncio.to_thread(check_image, path, self.max_pixels)
        assert self._pool is not None
        loop = asyncio.get_running_loop()
        started = loop.time()
        future = loop.run_in_executor(
            self._pool, self._recognize, path, detect_orientation, threshold
        )
        try:
            async with asyncio.timeout(self.timeout):
                raw = await asyncio.shield(future)
        except TimeoutError:
            raise TimeoutError(f"recognition took longer than {self.timeout:g}s") from None
        elapsed_ms = (loop.time() - started) * 1000
        words = to_words(raw, threshold)
        return OcrResult(
            text=join_text(words),
            confidence=mean_confidence(words),
            words=words,
            metadata={
                "engine": self.name,
                "engine_version": self.version,
                "language": languages,
                "angle_classifier": "on" if detect_orientation else "off",
                "image_format": fmt,
                "image_size": f"{width}x{height}",
                "processing_ms": f"{elapsed_ms:.1f}",
            },
        )


def to_words(raw: list[Any], threshold: float) -> list[Word]:
    """RapidOCR's [box, text, score] rows as words, grouped into lines top to bottom."""
    boxes = []
    for box, text, score in raw:
        if float(score) < threshold or not str(text).strip():
            continue
        quad = tuple(float(v) for point in box for v in point)
        boxes.append((quad, str(text).strip(), float(score)))
    boxes.sort(key=lambda b: (b[0][1] + b[0][7]) / 2)  # by vertical centre of the left edge
    words: list[Word] = []
    line, line_bottom = -1, float("-inf")
    for quad, text, score in boxes:
        top, bottom = min(quad[1::2]), max(quad[1::2])
        centre = (top + bottom) / 2
        if centre > line_bottom:  # below the current line: a new one
            line, line_bottom = line + 1, bottom
        words.append(Word(text=text, confidence=min(score, 1.0), quad=quad, line=line))
    # left to right within a line
    words.sort(key=lambda w: (w.line, w.quad[0]))
    return words
