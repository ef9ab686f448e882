"""Shared helpers for the Connect / gRPC-Web tests: a served EchoServer with its HTTP listener,
hand-framed envelopes, and metric lookups with the protocol label."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from conftest import running, settings

from gen.echo.v1 import EchoRequest, EchoResponse
from grpcstack import AsyncBaseServer
from platform_services.echo import EchoServer

ECHO = "/echo.v1.EchoService/Echo"
EXPAND = "/echo.v1.EchoService/Expand"
COLLECT = "/echo.v1.EchoService/Collect"
USER = {"user-id": "alice"}
GRPC_TYPE = {
    "Echo": "unary",
    "Collect": "client_stream",
    "Expand": "server_stream",
    "Chat": "bidi_stream",
}


@asynccontextmanager
async def web_server(**overrides: Any) -> AsyncIterator[EchoServer]:
    base: dict[str, Any] = {"GRPC_HTTP_PORT": 0, "GRPC_ENABLE_AUTH": True}
    base.update(overrides)
    async with running(EchoServer(settings(**base))) as server:
        assert isinstance(server, EchoServer)
        yield server


def url(server: AsyncBaseServer, path: str) -> str:
    return f"http://127.0.0.1:{server.http_port}{path}"


def handled(server: AsyncBaseServer, method: str, code: str, protocol: str) -> float:
    value = server.metrics_registry.get_sample_value(
        "grpc_server_handled_total",
        {
            "grpc_service": "echo.v1.EchoService",
            "grpc_method": method,
            "grpc_type": GRPC_TYPE[method],
            "protocol": protocol,
            "grpc_code": code,
        },
    )
    return value or 0.0


def envelope(data: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(data)) + data


def split_envelopes(body: bytes) -> list[tuple[int, bytes]]:
    out = []
    pos = 0
    while pos < len(body):
        flags, length = struct.unpack(">BI", body[pos : pos + 5])
        out.append((flags, body[pos + 5 : pos + 5 + length]))
        pos += 5 + length
    assert pos == len(body), "trailing bytes after the last envelope"
    return out


def grpc_web_trailers(block: bytes) -> dict[str, str]:
    lines = block.decode("latin-1").split("\r\n")
    return {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines if ln)}


def decode_grpc_web(body: bytes, text: bool = False) -> tuple[list[EchoResponse], dict[str, str]]:
    if text:
        # each response chunk is its own padded base64 block: decode 4 characters at a time
        body = b"".join(base64.b64decode(body[i : i + 4]) for i in range(0, len(body), 4))
    messages, trailers = [], {}
    for flags, data in split_envelopes(body):
        if flags & 0x80:
            trailers = grpc_web_trailers(data)
        else:
            messages.append(EchoResponse.parse(data))
    return messages, trailers


def end_stream(frames: list[tuple[int, bytes]]) -> dict[str, Any]:
    flags, data = frames[-1]
    assert flags == 0x02, "a Connect stream ends with an end-of-stream envelope"
    return json.loads(data)  # type: ignore[no-any-return]


def proto(message: EchoRequest) -> bytes:
    return bytes(message)
