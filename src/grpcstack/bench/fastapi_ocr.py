"""Seed 001's pre-migration baseline: a FastAPI ``POST /ocr/extract`` with Pydantic models,
answering the same canned 50-box OCR result as ``CannedOcrServer`` (``uvicorn`` serves it).

Only the benchmark imports this module (``pip install fastapi uvicorn``).
"""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import BaseModel


class OcrRequest(BaseModel):
    public_image_path: str = ""
    private_image_path: str = ""
    language: str = "korean"
    confidence_threshold: float = 0.5
    use_angle_cls: bool = True


class BoundingBox(BaseModel):
    coordinates: list[float]


class TextBox(BaseModel):
    text: str
    confidence: float
    bbox: BoundingBox


class OcrResult(BaseModel):
    status: str
    text: str
    overall_confidence: float
    text_boxes: list[TextBox]
    metadata: dict[str, str]


def _canned() -> OcrResult:
    boxes = [
        TextBox(
            text=f"word{i}",
            confidence=0.5 + i / 100,
            bbox=BoundingBox(
                coordinates=[
                    10.0 * i,
                    20.0,
                    10.0 * i + 40,
                    20.0,
                    10.0 * i + 40,
                    44.0,
                    10.0 * i,
                    44.0,
                ]
            ),
        )
        for i in range(50)
    ]
    return OcrResult(
        status="SUCCESS",
        text=" ".join(b.text for b in boxes),
        overall_confidence=0.93,
        text_boxes=boxes,
        metadata={"engine": "tesseract", "language": "kor+eng", "psm": "3"},
    )


CANNED = _canned()
app = FastAPI()


@app.post("/ocr/extract")
async def extract(request: OcrRequest) -> OcrResult:
    return CANNED
