"""Seed 001's OCR worker stage in dual mode: the Strangler Fig step from HTTP/JSON to gRPC.

``OCR_TRANSPORT=http`` sends every job over HTTP/JSON (the Connect JSON form of
``ocr.v1.OCRService/ExtractText`` on the server's ``GRPC_HTTP_PORT``); ``OCR_TRANSPORT=grpc``
sends ``OCR_GRPC_ROLLOUT_PERCENT`` of the jobs over gRPC, chosen by a stable hash of the job id
(a job keeps its transport across retries), the rest over HTTP. A gRPC call that fails with a
retryable status (UNAVAILABLE, or a connection that could not be made) is retried once over HTTP
and counted in ``ocr_worker_fallbacks_total``. Both paths build the same ``OcrResult`` from the
same message: the HTTP answer is proto3 JSON read back into ``OcrResponse`` by protobuf's own
parser, so no hand-written JSON mapping can drift from the gRPC one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from grpclib.client import Channel
from grpclib.const import Status as GrpcStatus
from grpclib.encoding.proto import ProtoStatusDetailsCodec
from grpclib.exceptions import GRPCError, StreamTerminatedError
from prometheus_client import CollectorRegistry, Counter
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from gen.common.v1 import Status
from gen.ocr.v1 import OcrRequest, OcrResponse, OcrServiceStub
from grpcstack.codec import StackCodec
from grpcstack.web.jsonmap import JsonMapper
from grpcstack.web.protocol import CODE_NAMES

METHOD = "/ocr.v1.OCRService/ExtractText"
#: statuses after which the same job is sent over HTTP instead
RETRYABLE = frozenset({GrpcStatus.UNAVAILABLE})
_CODES_BY_NAME = {name: status for status, name in CODE_NAMES.items()}


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    OCR_TRANSPORT: Literal["http", "grpc"] = "http"
    OCR_GRPC_ROLLOUT_PERCENT: Annotated[int, Field(ge=0, le=100)] = 100
    OCR_GRPC_HOST: str = "127.0.0.1"
    OCR_GRPC_PORT: Annotated[int, Field(ge=1, le=65535)] = 50051
    OCR_HTTP_URL: str = "http://127.0.0.1:8080"
    OCR_REQUEST_TIMEOUT_SECONDS: Annotated[float, Field(gt=0)] = 300.0
    OCR_USER_ID: str = "ocr-worker"  # sent as user-id (the platform's auth behind a gateway)


@dataclass(frozen=True)
class Box:
    text: str
    confidence: float
    coordinates: tuple[float, ...]


@dataclass(frozen=True)
class OcrResult:
    """What the pipeline stores (the seed's OCRResult), whichever transport produced it."""

    text: str
    confidence: float
    boxes: tuple[Box, ...]
    metadata: dict[str, str]

    @classmethod
    def from_response(cls, response: OcrResponse) -> OcrResult:
        return cls(
            text=response.text,
            confidence=response.overall_confidence,
            boxes=tuple(
                Box(b.text, b.confidence, tuple(b.bbox.coordinates if b.bbox else ()))
                for b in response.text_boxes
            ),
            metadata=dict(response.metadata.data) if response.metadata else {},
        )


class OcrFailed(Exception):
    """The OCR call failed for a reason a retry over the other transport cannot fix."""

    def __init__(self, transport: str, code: GrpcStatus, message: str) -> None:
        super().__init__(f"OCR over {transport} failed: {code.name}: {message}")
        self.transport = transport
        self.code = code


class OcrStage:
    """One worker's OCR stage; ``await stage.close()`` when done."""

    def __init__(self, settings: WorkerSettings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self._channel: Channel | None = None
        self._http_client: Any = None
        self._json = JsonMapper()
        registry = registry if registry is not None else CollectorRegistry()
        self.calls = Counter(
            "ocr_worker_calls",
            "OCR calls by transport and outcome.",
            ("transport", "outcome"),
            registry=registry,
        )
        self.fallbacks = Counter(
            "ocr_worker_fallbacks",
            "gRPC calls retried over HTTP after a retryable failure.",
            ("code",),
            registry=registry,
        )

    def transport_for(self, job_id: str) -> Literal["http", "grpc"]:
        s = self.settings
        if s.OCR_TRANSPORT == "http":
            return "http"
        bucket = int.from_bytes(hashlib.sha256(job_id.encode()).digest()[:4], "big") % 100
        return "grpc" if bucket < s.OCR_GRPC_ROLLOUT_PERCENT else "http"

    async def run(self, job_id: str, *, private_path: str, public_path: str = "") -> OcrResult:
        request = OcrRequest(private_image_path=private_path, public_image_path=public_path)
        if self.transport_for(job_id) == "grpc":
            try:
                response = await self._grpc(request)
            except _Retryable as exc:
                self.fallbacks.labels(exc.code).inc()
                response = await self._http(request)
        else:
            response = await self._http(request)
        if response.status != Status.SUCCESS:
            message = response.error.message if response.error else "unknown error"
            raise OcrFailed("ocr", GrpcStatus.FAILED_PRECONDITION, message)
        return OcrResult.from_response(response)

    async def _grpc(self, request: OcrRequest) -> OcrResponse:
        s = self.settings
        if self._channel is None:
            self._channel = Channel(
                s.OCR_GRPC_HOST,
                s.OCR_GRPC_PORT,
                codec=StackCodec(),  # type: ignore[arg-type]
                status_details_codec=ProtoStatusDetailsCodec(),
            )
        try:
            response = await OcrServiceStub(self._channel).extract_text(
                request,
                timeout=s.OCR_REQUEST_TIMEOUT_SECONDS,
                metadata={"user-id": s.OCR_USER_ID} if s.OCR_USER_ID else None,
            )
        except GRPCError as exc:
            self.calls.labels("grpc", exc.status.name).inc()
            if exc.status in RETRYABLE:
                raise _Retryable(exc.status.name) from exc
            raise OcrFailed("grpc", exc.status, exc.message or "") from exc
        except (OSError, StreamTerminatedError) as exc:  # refused, reset, unreachable
            self.calls.labels("grpc", "UNAVAILABLE").inc()
            raise _Retryable("UNAVAILABLE") from exc
        self.calls.labels("grpc", "OK").inc()
        return response

    async def _http(self, request: OcrRequest) -> OcrResponse:
        import httpx

        s = self.settings
        if self._http_client is None:
            self._http_client = httpx.AsyncClient(timeout=s.OCR_REQUEST_TIMEOUT_SECONDS)
        headers = {"content-type": "application/json"}
        if s.OCR_USER_ID:
            headers["user-id"] = s.OCR_USER_ID
        body = {
            "privateImagePath": request.private_image_path,
            "publicImagePath": request.public_image_path,
        }
        try:
            reply = await self._http_client.post(
                f"{s.OCR_HTTP_URL.rstrip('/')}{METHOD}", json=body, headers=headers
            )
        except httpx.HTTPError as exc:
            self.calls.labels("http", "UNAVAILABLE").inc()
            raise OcrFailed("http", GrpcStatus.UNAVAILABLE, str(exc)) from exc
        if reply.status_code != 200:
            try:
                error = reply.json()
                code = _CODES_BY_NAME.get(error.get("code", ""), GrpcStatus.UNKNOWN)
                message = str(error.get("message", ""))
            except ValueError:
                code, message = GrpcStatus.UNKNOWN, f"HTTP {reply.status_code}"
            self.calls.labels("http", code.name).inc()
            raise OcrFailed("http", code, message)
        self.calls.labels("http", "OK").inc()
        return OcrResponse.parse(self._json.json_to_wire(reply.content, OcrResponse))

    async def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self._http_client is not None:
            await self._http_client.aclose()
            self._http_client = None


class _Retryable(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code
