"""Tesseract through its command line: word boxes and confidences from its TSV output.

The engine runs ``tesseract`` as a subprocess (never on the event loop thread), at most
``max_concurrency`` at once, each bounded by ``timeout``.
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
import shutil
from pathlib import Path

from .engine import (
    EngineUnavailable,
    OcrResult,
    Word,
    check_image,
    join_text,
    mean_confidence,
    rect_quad,
)

# Request language names (the seed's "korean") to Tesseract codes.
LANGUAGE_ALIASES = {
    "korean": "kor+eng",
    "ko": "kor",
    "kor": "kor",
    "english": "eng",
    "en": "eng",
    "eng": "eng",
}
_TESS_CODE = re.compile(r"^[a-z][a-z_]{1,15}$")
INSTALL_HINT = "install Tesseract: apt-get install tesseract-ocr tesseract-ocr-kor"


def resolve_languages(language: str) -> str:
    """'korean' -> 'kor+eng'; 'kor+eng' stays; raises ValueError for anything malformed."""
    name = (language or "korean").strip().lower()
    if name in LANGUAGE_ALIASES:
        return LANGUAGE_ALIASES[name]
    parts = name.split("+")
    if not all(_TESS_CODE.match(p) for p in parts):
        raise ValueError(f"language {language!r} is not a known name or Tesseract code")
    return "+".join(LANGUAGE_ALIASES.get(p, p) for p in parts)


def parse_tsv(tsv: str) -> list[Word]:
    words = []
    lines: dict[tuple[str, ...], int] = {}
    for row in csv.DictReader(io.StringIO(tsv), delimiter="\t", quoting=csv.QUOTE_NONE):
        if row.get("level") != "5":
            continue
        text = (row.get("text") or "").strip()
        conf = float(row.get("conf") or -1)
        if not text or conf < 0:
            continue
        line_key = (row["page_num"], row["block_num"], row["par_num"], row["line_num"])
        words.append(
            Word(
                text=text,
                confidence=min(conf / 100.0, 1.0),
                quad=rect_quad(
                    float(row["left"]), float(row["top"]), float(row["width"]), float(row["height"])
                ),
                line=lines.setdefault(line_key, len(lines)),
            )
        )
    return words


class TesseractEngine:
    name = "tesseract"

    def __init__(
        self,
        command: str = "tesseract",
        *,
        max_concurrency: int = 2,
        timeout: float = 120.0,
        max_pixels: int = 40_000_000,
    ) -> None:
        self.command = command
        self.timeout = timeout
        self.max_pixels = max_pixels
        self._slots = asyncio.Semaphore(max_concurrency)
        self.version = ""
        self.languages: frozenset[str] = frozenset()
        self.path: str | None = None

    @property
    def available(self) -> bool:
        return self.path is not None and bool(self.languages)

    @property
    def unavailable_reason(self) -> str:
        return "" if self.available else f"the OCR engine is not available: {INSTALL_HINT}"

    async def probe(self) -> None:
        """Find the binary, its version and installed languages (stays unavailable on error)."""
        self.path = shutil.which(self.command)
        if self.path is None:
            return
        try:
            out = await self._run(self.path, "--version")
            self.version = out.splitlines()[0].replace("tesseract", "").strip() if out else ""
            langs = await self._run(self.path, "--list-langs")
            self.languages = frozenset(
                line.strip() for line in langs.splitlines()[1:] if line.strip()
            )
        except (OSError, RuntimeError, TimeoutError):
            self.path = None

    def resolve_languages(self, language: str) -> str:
        return resolve_languages(language)

    def require(self, languages: str) -> None:
        if not self.available:
            raise EngineUnavailable(self.unavailable_reason)
        missing = [code for code in languages.split("+") if code not in self.languages]
        if missing:
            raise EngineUnavailable(
                f"Tesseract language data not installed: {', '.join(missing)} "
                f"(apt-get install {' '.join('tesseract-ocr-' + m for m in missing)})"
            )

    async def recognize(
        self, path: Path, *, languages: str, threshold: float, detect_orientation: bool
    ) -> OcrResult:
        self.require(languages)
        fmt, width, height = await asyncio.to_thread(check_image, path, self.max_pixels)
        # psm 1 = automatic segmentation with orientation and script detection (the seed's
        # use_angle_cls); psm 3 = automatic segmentation without it.
        psm = "1" if detect_orientation else "3"
        assert self.path is not None
        loop = asyncio.get_running_loop()
        started = loop.time()
        tsv = await self._run(self.path, str(path), "stdout", "-l", languages, "--psm", psm, "tsv")
        elapsed_ms = (loop.time() - started) * 1000
        words = [w for w in parse_tsv(tsv) if w.confidence >= threshold]
        return OcrResult(
            text=join_text(words),
            confidence=mean_confidence(words),
            words=words,
            metadata={
                "engine": self.name,
                "engine_version": self.version,
                "language": languages,
                "psm": psm,
                "image_format": fmt,
                "image_size": f"{width}x{height}",
                "processing_ms": f"{elapsed_ms:.1f}",
            },
        )

    async def _run(self, *argv: str) -> str:
        async with self._slots:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={"OMP_THREAD_LIMIT": "1", "PATH": "/usr/bin:/bin"},
            )
            try:
                async with asyncio.timeout(self.timeout):
                    out, err = await proc.communicate()
            except BaseException:  # timeout or the caller's cancellation: never leak the child
                proc.kill()
                await proc.wait()
                raise
        if proc.returncode != 0:
            detail = err.decode(errors="replace").strip().splitlines()
            raise RuntimeError(
                f"tesseract exited {proc.returncode}: {detail[-1] if detail else ''}"
            )
        return out.decode(errors="replace")
