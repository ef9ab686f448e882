"""Teach grpclib's CLIENT gzip, for the interop tests (grpclib has no compression at all).

Two module functions of grpclib.client are wrapped while the context manager is active: request
metadata may then carry ``grpc-encoding`` / ``grpc-accept-encoding`` (grpclib refuses grpc-*
keys), and compressed response messages are inflated and recorded in ``received_flags``.
Messages are sent compressed with ``send_compressed``.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpclib.client
from multidict import MultiDict

_PASS = ("grpc-encoding", "grpc-accept-encoding")
received_flags: list[bool] = []


def gzip(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


@contextmanager
def enabled() -> Iterator[list[bool]]:
    original_encode = grpclib.client.encode_metadata
    original_recv = grpclib.client.recv_message

    def encode_metadata(metadata: Any) -> list[tuple[str, str]]:
        passed = [(k, v) for k, v in metadata.items() if k in _PASS]
        rest = MultiDict((k, v) for k, v in metadata.items() if k not in _PASS)
        return [*original_encode(rest), *passed]

    async def recv_message(stream: Any, codec: Any, message_type: Any) -> Any:
        meta = await stream.recv_data(5)
        if not meta:
            return None
        compressed, length = struct.unpack(">?I", meta)
        data = await stream.recv_data(length)
        received_flags.append(compressed)
        if compressed:
            data = zlib.decompress(data, 16 + zlib.MAX_WBITS)
        return codec.decode(data, message_type)

    received_flags.clear()
    grpclib.client.encode_metadata = encode_metadata
    grpclib.client.recv_message = recv_message
    try:
        yield received_flags
    finally:
        grpclib.client.encode_metadata = original_encode
        grpclib.client.recv_message = original_recv


async def send_compressed(stream: Any, message: Any, *, end: bool = False) -> None:
    """Send one message gzip-compressed (flag 1) on a grpclib client stream."""
    if not stream._send_request_done:
        await stream.send_request()
    payload = gzip(bytes(message))
    await stream._stream.send_data(struct.pack(">?I", True, len(payload)) + payload, end_stream=end)
    if end:
        stream._end_done = True
