"""Message compression (gzip), which grpclib lacks; the transport calls these.

Decompression is bounded by the max message length applied to the DECOMPRESSED size, so a small
compressed message cannot expand into gigabytes (a decompression bomb) before it is refused.
"""

from __future__ import annotations

import zlib

GZIP = "gzip"
IDENTITY = "identity"
SUPPORTED = (GZIP, IDENTITY)
ACCEPT_ENCODING = "gzip,identity"


class TooLarge(Exception):
    """The decompressed message would exceed the limit."""


class Corrupt(Exception):
    """Not a valid gzip stream."""


def accepts_gzip(header: str | None) -> bool:
    """Whether a grpc-accept-encoding header value lists gzip."""
    return bool(header) and GZIP in (part.strip() for part in header.split(","))  # type: ignore[union-attr]


def gzip_compress(data: bytes, level: int = 6) -> bytes:
    compressor = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def gzip_decompress(data: bytes, limit: int) -> bytes:
    """The decompressed bytes; TooLarge past ``limit`` (without inflating further), Corrupt if
    the stream is invalid or incomplete."""
    parts: list[bytes] = []
    size = 0
    rest = data
    while True:  # a gzip file may hold several members: they concatenate (RFC 1952 2.2)
        decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out = decompressor.decompress(rest, limit - size + 1)
        except zlib.error as exc:
            raise Corrupt(str(exc)) from None
        size += len(out)
        if size > limit or decompressor.unconsumed_tail:
            raise TooLarge(f"decompressed message larger than max ({limit})")
        if not decompressor.eof:
            raise Corrupt("incomplete gzip stream")
        parts.append(out)
        rest = decompressor.unused_data
        if not rest:
            return parts[0] if len(parts) == 1 else b"".join(parts)
