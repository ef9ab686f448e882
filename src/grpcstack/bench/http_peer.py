"""Seed 001's HTTP/JSON OCR endpoint (FastAPI + uvicorn) and its worker-side call: the "before".

    python -m grpcstack.bench.http_peer --engine module:factory --data-root DIR --port P

``POST /ocr/extract`` with ``{"public_image_path", "private_image_path"}`` answers
``{"text", "confidence", "text_boxes": [{"text", "confidence", "bbox"}], "metadata"}``, the
fields seed 001's OCRStage reads. The engine is the one the gRPC server uses (``--engine`` names
a factory returning it), so both sides do the same recognition. ``http_caller`` is the seed's
``_execute_http``: a new ``httpx.AsyncClient(timeout=300)`` per call, POST, ``raise_for_status``,
parse the JSON. ``connect_json_caller`` makes the same pooled call to grpcstack's own HTTP/JSON
mode (Connect unary on ``GRPC_HTTP_PORT``). fastapi, uvicorn and httpx come with the ``bench``
extra.
"""

from __future__ import annotations

import argparse
import importlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel


class OcrRequestBody(BaseModel):
    """The JSON body seed 001's worker posts."""

    public_image_path: str = ""
    private_image_path: str = ""
    language: str = "en"


def build_app(engine: Any, data_root: Path) -> Any:
    from fastapi import FastAPI, HTTPException

    root = data_root.resolve()

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        await engine.probe()  # loads the models, as the seed's lifespan does
        yield

    app = FastAPI(lifespan=lifespan)

    @app.post("/ocr/extract")
    async def extract(body: OcrRequestBody) -> dict[str, Any]:
        raw = body.private_image_path or body.public_image_path
        path = (root / raw).resolve()
        if not raw or not path.is_relative_to(root):
            raise HTTPException(status_code=400, detail="invalid image path")
        try:
            result = await engine.recognize(
                path,
                languages=engine.resolve_languages(body.language),
                threshold=0.5,
                detect_orientation=True,
            )
        except FileNotFoundError:
            raise HTTPException(status_code=404, detail="image not found") from None
        return {
            "text": result.text,
            "confidence": result.confidence,
            "text_boxes": [
                {"text": w.text, "confidence": w.confidence, "bbox": list(w.quad)}
                for w in result.words
            ],
            "metadata": dict(result.metadata),
        }

    return app


class _HttpCaller:
    def __init__(self, port: int, pooled: Any = None) -> None:
        self.url = f"http://127.0.0.1:{port}/ocr/extract"
        self.images = os.environ["BENCH_OCR_IMAGES"].split(",")
        self.pooled = pooled
        self.last_request = b""
        self.last_response = b""

    async def call(self, i: int) -> str:
        import httpx

        image = self.images[i % len(self.images)]
        body = {"public_image_path": image, "private_image_path": image, "language": "en"}
        if self.pooled is not None:
            response = await self.pooled.post(self.url, json=body)
            response.raise_for_status()
        else:
            # as seed 001's OCRStage._execute_http: a client per call
            async with httpx.AsyncClient(timeout=300.0) as client:
                response = await client.post(self.url, json=body)
                response.raise_for_status()
        data = self._received(response)
        return "OK" if "text" in data else "BAD_BODY"

    def _received(self, response: Any) -> Any:
        """The response's JSON, with both bodies kept for the payload row."""
        data = response.json()
        self.last_request = response.request.content
        self.last_response = response.content
        return data

    def payload(self) -> dict[str, int]:
        return {"request": len(self.last_request), "response": len(self.last_response)}


@asynccontextmanager
async def http_caller(port: int) -> AsyncIterator[_HttpCaller]:
    """The seed's call: a new httpx.AsyncClient (connection, pool) per call."""
    yield _HttpCaller(port)


@asynccontextmanager
async def pooled_http_caller(port: int) -> AsyncIterator[_HttpCaller]:
    """The fair HTTP/JSON call: one httpx.AsyncClient (keep-alive pool) for the whole run."""
    import httpx

    async with httpx.AsyncClient(timeout=300.0) as client:
        yield _HttpCaller(port, client)


class _ConnectCaller(_HttpCaller):
    """The same pooled httpx call, to grpcstack's own HTTP/JSON mode: Connect unary, a POST of
    the request's proto3 JSON to ``/ocr.v1.OCRService/ExtractText`` on ``GRPC_HTTP_PORT``."""

    URL_PATH = "/ocr.v1.OCRService/ExtractText"

    def __init__(self, port: int, client: Any) -> None:
        super().__init__(port, client)
        self.url = f"http://127.0.0.1:{port}{self.URL_PATH}"

    async def call(self, i: int) -> str:
        image = self.images[i % len(self.images)]
        # the fields the gRPC caller sets (OcrClient.extract_text), by their JSON names
        body = {
            "privateImagePath": image,
            "language": "en",
            "confidenceThreshold": 0.5,
            "useAngleCls": True,
        }
        response = await self.pooled.post(self.url, json=body)
        if response.status_code != 200:
            return f"HTTP_{response.status_code}"
        data = self._received(response)
        return "OK" if data.get("status") == "STATUS_SUCCESS" else f"OCR_{data.get('status')}"


@asynccontextmanager
async def connect_json_caller(port: int) -> AsyncIterator[_ConnectCaller]:
    """grpcstack's HTTP/JSON (Connect) mode with the pooled HTTP caller's client."""
    import httpx

    async with httpx.AsyncClient(timeout=300.0) as client:
        yield _ConnectCaller(port, client)


def main() -> None:
    parser = argparse.ArgumentParser(prog="grpcstack.bench.http_peer")
    parser.add_argument("--engine", required=True, help="module:factory returning the engine")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    import uvicorn

    module, _, name = args.engine.partition(":")
    engine = getattr(importlib.import_module(module), name)()
    app = build_app(engine, Path(args.data_root))
    # uvicorn's defaults: uvloop + httptools when installed, an access line per call (as grpcstack)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="info")


if __name__ == "__main__":
    main()
