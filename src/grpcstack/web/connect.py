"""The Connect protocol's responses (connectrpc.com/docs/protocol).

Unary: the message is the whole body (HTTP 200); response metadata are headers, trailers are
headers prefixed ``trailer-``; an error is HTTP 4xx/5xx (the spec's table) with a JSON body
``{"code", "message", "details"}``. Streams: HTTP 200, each message in a 5-byte envelope, then
an end-of-stream envelope (flag 0x02) holding ``{"error"?, "metadata"}`` as JSON.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from google.protobuf import any_pb2
from google.protobuf.message import Message as ProtobufMessage
from grpclib.const import Status

from ..compression import gzip_compress
from .call import Headers, Responder
from .framing import FLAG_COMPRESSED, FLAG_END_STREAM, envelope
from .jsonmap import JsonMapper
from .protocol import CODE_NAMES, HTTP_STATUS

Send = Any  # the ASGI send callable


def _b64(data: bytes) -> str:
    # Connect's binary values: standard base64, padding omitted (decoders accept both)
    return base64.b64encode(data).decode().rstrip("=")


def error_json(
    status: Status, message: str | None, details: Any, mapper: JsonMapper
) -> dict[str, Any]:
    body: dict[str, Any] = {"code": CODE_NAMES.get(status, "unknown")}
    if message:
        body["message"] = message
    out = []
    for detail in details or ():
        if not isinstance(detail, ProtobufMessage):
            continue
        packed = any_pb2.Any()
        packed.Pack(detail)
        item: dict[str, Any] = {
            "type": packed.TypeName(),
            "value": _b64(packed.value),
        }
        try:
            item["debug"] = mapper.details_to_debug(detail)
        except Exception:  # debug is optional; never fail an error response over it
            pass
        out.append(item)
    if out:
        body["details"] = out
    return body


def _encode_headers(pairs: Headers, prefix: str = "") -> list[tuple[bytes, bytes]]:
    return [((prefix + k).encode("latin-1"), v.encode("latin-1")) for k, v in pairs]


class ConnectUnaryResponder(Responder):
    """Buffers the one response; writes status, headers and body once the call ended."""

    def __init__(self, send: Send, codec: str, mapper: JsonMapper) -> None:
        self._send = send
        self._content_type = f"application/{codec}"
        self._mapper = mapper
        self._initial: Headers = []
        self._body: bytes | None = None
        self.http_status = 0

    async def headers(self, metadata: Headers) -> None:
        self._initial = metadata

    async def message(self, data: bytes) -> None:
        self._body = data

    async def end(
        self, status: Status, message: str | None, details: Any, trailers: Headers
    ) -> None:
        headers = _encode_headers(self._initial) + _encode_headers(trailers, "trailer-")
        if status is Status.OK and self._body is not None:
            body = self._body
            content_type = self._content_type
            self.http_status = 200
        else:
            body = json.dumps(error_json(status, message, details, self._mapper)).encode()
            content_type = "application/json"
            self.http_status = HTTP_STATUS.get(status, 500)
        if body and self.compress_now():
            body = gzip_compress(body)
            headers.append((b"content-encoding", b"gzip"))
        headers += [
            (b"content-type", content_type.encode()),
            (b"content-length", str(len(body)).encode()),
        ]
        await self._send(
            {"type": "http.response.start", "status": self.http_status, "headers": headers}
        )
        await self._send({"type": "http.response.body", "body": body})


class ConnectStreamResponder(Responder):
    def __init__(self, send: Send, codec: str, mapper: JsonMapper) -> None:
        self._send = send
        self._content_type = f"application/connect+{codec}".encode()
        self._mapper = mapper
        self._started = False
        self.http_status = 200

    async def headers(self, metadata: Headers) -> None:
        headers = [*_encode_headers(metadata), (b"content-type", self._content_type)]
        if self.gzip_ok:  # each envelope's flag says whether it is compressed
            headers.append((b"connect-content-encoding", b"gzip"))
        self._started = True
        await self._send({"type": "http.response.start", "status": 200, "headers": headers})

    async def message(self, data: bytes) -> None:
        flags = 0
        if self.compress_now():
            data, flags = gzip_compress(data), FLAG_COMPRESSED
        await self._send(
            {"type": "http.response.body", "body": envelope(flags, data), "more_body": True}
        )

    async def end(
        self, status: Status, message: str | None, details: Any, trailers: Headers
    ) -> None:
        if not self._started:
            await self.headers([])
        end: dict[str, Any] = {}
        if status is not Status.OK:
            end["error"] = error_json(status, message, details, self._mapper)
        if trailers:
            metadata: dict[str, list[str]] = {}
            for key, value in trailers:
                metadata.setdefault(key, []).append(value)
            end["metadata"] = metadata
        data = json.dumps(end).encode()
        await self._send({"type": "http.response.body", "body": envelope(FLAG_END_STREAM, data)})
