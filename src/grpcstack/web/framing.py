"""Reading an ASGI request body: whole (unary) or as 5-byte-prefixed envelopes (streams).

Limits are applied before anything is buffered: a Content-Length over the limit is refused
before the first body byte is read, an envelope whose length prefix is over it before its body
is read, and a chunked body as soon as it passes it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from ..compression import Corrupt, TooLarge, gzip_decompress

Receive = Callable[[], Awaitable[dict[str, Any]]]
PREFIX = struct.Struct(">BI")

FLAG_COMPRESSED = 0x01
FLAG_END_STREAM = 0x02  # Connect streaming: the end-of-stream message
FLAG_TRAILERS = 0x80  # gRPC-Web: the trailers frame


class ClientGone(StreamTerminatedError):
    """The HTTP client disconnected before the request body ended (a StreamTerminatedError, so
    error handling passes it through and the call ends CANCELLED, as a reset gRPC stream)."""


def too_large(size: int, limit: int) -> GRPCError:
    return GRPCError(
        Status.RESOURCE_EXHAUSTED, f"Received message larger than max ({size} vs. {limit})"
    )


def decompress(data: bytes, limit: int) -> bytes:
    try:
        return gzip_decompress(data, limit)
    except TooLarge as exc:
        raise GRPCError(Status.RESOURCE_EXHAUSTED, f"Received {exc}") from None
    except Corrupt:
        raise GRPCError(Status.INVALID_ARGUMENT, "Could not decompress the request") from None


class BodyReader:
    """The request body as it arrives, optionally base64 (gRPC-Web text)."""

    def __init__(
        self, receive: Receive, *, base64_text: bool = False, complete: bool = False
    ) -> None:
        self._receive = receive
        self._buf = bytearray()
        self._more = not complete
        #: set once the whole body arrived (or the client went away)
        self.done = asyncio.Event()
        if complete:
            self.done.set()
        self._b64 = base64_text
        self._b64_rest = b""

    async def _fill(self) -> bool:
        """Read one more chunk; False at the end of the body."""
        if not self._more:
            return False
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self._more = False
            self.done.set()
            raise ClientGone()
        chunk = message.get("body", b"")
        self._more = bool(message.get("more_body", False))
        if not self._more:
            self.done.set()
        if self._b64:
            chunk = self._b64_rest + chunk.replace(b"\r", b"").replace(b"\n", b"")
            cut = len(chunk) - len(chunk) % 4 if self._more else len(chunk)
            chunk, self._b64_rest = chunk[:cut], chunk[cut:]
            try:
                chunk = _b64decode_padded(chunk)
            except (binascii.Error, ValueError):
                raise GRPCError(Status.INVALID_ARGUMENT, "Invalid base64 request body") from None
        self._buf += chunk
        return True

    async def read_all(self, limit: int) -> bytes:
        while self._more:
            await self._fill()
            if len(self._buf) > limit:
                raise too_large(len(self._buf), limit)
        data = bytes(self._buf)
        self._buf.clear()
        return data

    async def read_exact(self, n: int) -> bytes:
        """``n`` bytes, or fewer at the end of the body."""
        while len(self._buf) < n and await self._fill():
            pass
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    async def read_envelope(self, limit: int, *, compressed_ok: bool) -> bytes | None:
        """The next enveloped message (decompressed), None at a clean end of the body."""
        head = await self.read_exact(5)
        if not head:
            return None
        if len(head) != 5:
            raise GRPCError(Status.INVALID_ARGUMENT, "Truncated message prefix")
        flags, length = PREFIX.unpack(head)
        if length > limit:
            raise too_large(length, limit)
        if flags & ~FLAG_COMPRESSED:
            raise GRPCError(Status.INVALID_ARGUMENT, f"Invalid envelope flags 0x{flags:02x}")
        data = await self.read_exact(length)
        if len(data) != length:
            raise GRPCError(Status.INVALID_ARGUMENT, "Truncated message")
        if flags & FLAG_COMPRESSED:
            if not compressed_ok:
                raise GRPCError(Status.INTERNAL, "Compressed message without an encoding")
            data = decompress(data, limit)
        return data

    async def discard(self, limit: int) -> None:
        """Read and drop what is left of the body (at most ``limit`` bytes): a client still
        sending gets a clean end of stream instead of a reset (HTTP/2 RST_STREAM(CANCEL))."""
        dropped = 0
        while self._more and dropped <= limit:
            dropped += len(self._buf)
            self._buf.clear()
            await self._fill()

    async def drain(self) -> None:
        """Wait for the client to go away (after the body): raises ClientGone then."""
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise ClientGone()


def _b64decode_padded(data: bytes) -> bytes:
    # gRPC-Web text bodies may be several padded base64 blocks one after the other
    out = bytearray()
    start = 0
    while start < len(data):
        end = data.find(b"=", start)
        if end == -1:
            out += base64.b64decode(data[start:], validate=True)
            break
        while end < len(data) and data[end : end + 1] == b"=":
            end += 1
        out += base64.b64decode(data[start:end], validate=True)
        start = end
    return bytes(out)


def envelope(flags: int, data: bytes) -> bytes:
    return PREFIX.pack(flags, len(data)) + data
