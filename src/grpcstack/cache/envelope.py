"""What the remote tiers store: raw protobuf bytes behind a 9-byte header, never pickle.

The header carries the value's hard expiry (unix time) and its kind (a value, a cached "not
found", or a delete's tombstone). Promotion to an upper tier uses ``min(tier ttl, hard expiry -
now)``, so a value is never served longer than the TTL it was written with, however often it is
promoted.
"""

from __future__ import annotations

import struct
from typing import Any

from aiocache.serializers import BaseSerializer

_HEADER = struct.Struct(">dB")
HEADER_LEN = _HEADER.size
KIND_VALUE = 0
KIND_NEGATIVE = 1  # a cached "not found"; the payload is the status message
KIND_TOMBSTONE = 2  # a delete's marker in L2 (payload: its id) that older loads cannot overwrite


def wrap(payload: bytes, hard_expiry: float, kind: int = KIND_VALUE) -> bytes:
    return _HEADER.pack(hard_expiry, kind) + payload


def unwrap(blob: bytes) -> tuple[float, int, bytes]:
    if len(blob) < HEADER_LEN:
        raise ValueError("cache entry shorter than its header")
    expiry, kind = _HEADER.unpack_from(blob, 0)
    return expiry, kind, blob[HEADER_LEN:]


class RawBytesSerializer(BaseSerializer):  # type: ignore[misc]
    """Bytes in, bytes out. ``DEFAULT_ENCODING = None`` keeps aiocache from decoding them."""

    DEFAULT_ENCODING = None

    def dumps(self, value: Any) -> bytes:
        if isinstance(value, bytes):
            return value
        if isinstance(value, bytearray | memoryview):
            return bytes(value)
        raise TypeError(f"cache values are bytes, got {type(value).__name__}")

    def loads(self, value: Any) -> Any:
        return value
