"""gRPC-Web responses (github.com/grpc/grpc/blob/master/doc/PROTOCOL-WEB.md).

The body is gRPC's length-prefixed messages followed by one trailers frame (flag 0x80) holding
``grpc-status``, ``grpc-message`` and the trailing metadata as HTTP/1 header lines, so no HTTP
trailers are needed (browsers cannot read them). The text variant base64-encodes every chunk.
"""

from __future__ import annotations

import base64
from typing import Any

from grpclib.const import Status
from grpclib.encoding.proto import ProtoStatusDetailsCodec
from grpclib.metadata import encode_grpc_message

from ..compression import gzip_compress
from .call import Headers, Responder
from .framing import FLAG_COMPRESSED, FLAG_TRAILERS, envelope

Send = Any

_DETAILS_CODEC = ProtoStatusDetailsCodec()


class GrpcWebResponder(Responder):
    def __init__(self, send: Send, content_type: str, *, text: bool) -> None:
        self._send = send
        self._content_type = content_type.encode()
        self._text = text
        self._started = False
        self.http_status = 200

    async def _body(self, data: bytes, more: bool) -> None:
        if self._text:
            data = base64.b64encode(data)
        await self._send({"type": "http.response.body", "body": data, "more_body": more})

    async def headers(self, metadata: Headers) -> None:
        headers = [
            *((k.encode("latin-1"), v.encode("latin-1")) for k, v in metadata),
            (b"content-type", self._content_type),
            (b"grpc-accept-encoding", b"gzip,identity"),
        ]
        if self.gzip_ok:  # each message's flag says whether it is compressed
            headers.append((b"grpc-encoding", b"gzip"))
        self._started = True
        await self._send({"type": "http.response.start", "status": 200, "headers": headers})

    async def message(self, data: bytes) -> None:
        flags = 0
        if self.compress_now():
            data, flags = gzip_compress(data), FLAG_COMPRESSED
        await self._body(envelope(flags, data), True)

    async def end(
        self, status: Status, message: str | None, details: Any, trailers: Headers
    ) -> None:
        if not self._started:
            await self.headers([])
        lines = [f"grpc-status: {status.value}"]
        if message:
            lines.append(f"grpc-message: {encode_grpc_message(message)}")
        if details:
            raw = _DETAILS_CODEC.encode(status, message, details)
            lines.append("grpc-status-details-bin: " + base64.b64encode(raw).decode().rstrip("="))
        lines += [f"{k}: {v}" for k, v in trailers]
        block = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        await self._body(envelope(FLAG_TRAILERS, block), False)
