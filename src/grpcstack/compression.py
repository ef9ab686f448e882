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
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = decompressor.decompress(data, limit + 1)
    except zlib.error as exc:
        raise Corrupt(str(exc)) from None
    if len(out) > limit or decompressor.unconsumed_tail:
        raise TooLarge(f"decompressed message larger than max ({limit})")
    if not decompressor.eof:
        raise Corrupt("incomplete gzip stream")
    return out
