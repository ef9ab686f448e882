"""Benchmark fixtures: messages of realistic shape, and a server answering with a canned one.

``CannedOcrServer`` is NOT an OCR engine: it answers ExtractText with a fixed 50-box response so
that `make bench-codec` measures the wire codec, nothing else. BENCH_MODE picks the handler:
``message`` (a betterproto2 message, encoded per call), ``cached`` (through @cached: stored bytes
after the first call), ``upb`` (protobuf's C messages end to end: the reference).
"""

from __future__ import annotations

import os
from typing import Any

from google.protobuf import message_factory
from grpclib.const import Cardinality, Handler

from gen.common.v1 import BoundingBox, ErrorInfo, Metadata, Status
from gen.echo.v1 import EchoResponse
from gen.ocr.v1 import OcrRequest, OcrResponse, OcrServiceBase, TextBox
from grpcstack import AsyncBaseServer
from grpcstack.cache import cached


def ocr_response_50() -> OcrResponse:
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
    return OcrResponse(
        status=Status.SUCCESS,
        text=" ".join(b.text for b in boxes),
        overall_confidence=0.93,
        text_boxes=boxes,
        metadata=Metadata(data={"engine": "tesseract", "language": "kor+eng", "psm": "3"}),
        error=ErrorInfo(),
    )


def small_message() -> EchoResponse:
    return EchoResponse(message="hello, grpcstack", index=42, payload_size=1024)


CANNED = ocr_response_50()


class _Canned(OcrServiceBase):
    async def extract_text(self, message: OcrRequest) -> OcrResponse:
        return CANNED


class _CachedCanned(OcrServiceBase):
    @cached(ttl=3600, shared=True)
    async def extract_text(self, message: OcrRequest) -> OcrResponse:
        return CANNED


class _UpbCanned:
    """ExtractText with protobuf (upb) message classes built from the same descriptors."""

    def __mapping__(self) -> dict[str, Handler]:
        request_cls = message_factory.GetMessageClass(OcrRequest.DESCRIPTOR)
        reply_cls = message_factory.GetMessageClass(OcrResponse.DESCRIPTOR)
        canned = reply_cls.FromString(bytes(CANNED))

        async def extract_text(stream: Any) -> None:
            await stream.recv_message()
            await stream.send_message(canned)

        return {
            "/ocr.v1.OCRService/ExtractText": Handler(
                extract_text, Cardinality.UNARY_UNARY, request_cls, reply_cls
            )
        }


class CannedOcrServer(AsyncBaseServer):
    def services(self) -> list[Any]:
        mode = os.environ.get("BENCH_MODE", "message")
        return [{"message": _Canned, "cached": _CachedCanned, "upb": _UpbCanned}[mode]()]
