"""Test images drawn with a real TrueType font, large enough for Tesseract to read."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

LATIN_FONTS = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
]
KOREAN_FONTS = [
    "/usr/share/fonts/truetype/nanum/NanumGothic.ttf",
    "/usr/share/fonts/truetype/nanum/NanumBarunGothic.ttf",
]


def find_font(candidates: list[str]) -> str | None:
    return next((f for f in candidates if Path(f).exists()), None)


def text_image(path: Path, lines: list[str], *, font: str | None = None, size: int = 48) -> Path:
    font_path = font or find_font(LATIN_FONTS)
    assert font_path, "no TrueType font installed (apt-get install fonts-dejavu-core)"
    face = ImageFont.truetype(font_path, size)
    line_height = int(size * 1.6)
    width = max(int(face.getlength(line)) for line in lines) + 2 * size
    image = Image.new("L", (width, line_height * len(lines) + 2 * size), color=255)
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((size, size + i * line_height), line, font=face, fill=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
