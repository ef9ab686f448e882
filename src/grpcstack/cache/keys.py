"""Cache keys: method plus a canonical encoding of the request, salted with a schema version.

``bytes(msg)`` of betterproto2 is not canonical (map entries follow insertion order), so the
request is re-encoded through the upb class built from the message's own descriptor with
``deterministic=True``: equal messages give equal keys, whatever their map order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from google.protobuf import message_factory
from google.protobuf.message import Message as ProtobufMessage

_UPB: dict[type, Any] = {}
_SAFE = "-._~@+=,"  # everything else, ':' and glob characters included, is percent-encoded


def canonical_bytes(message: Any) -> bytes:
    cls = type(message)
    if isinstance(message, ProtobufMessage):  # already a protobuf (upb) message
        return message.SerializeToString(deterministic=True)
    upb = _UPB.get(cls)
    if upb is None:
        upb = _UPB[cls] = message_factory.GetMessageClass(cls.DESCRIPTOR)
    return upb.FromString(bytes(message)).SerializeToString(deterministic=True)  # type: ignore[no-any-return]


def key_part(value: str) -> str:
    return quote(value, safe=_SAFE)


def method_prefix(method: str, schema: str) -> str:
    """Every key of one method starts with this (for glob invalidation)."""
    return f"v{key_part(schema)}:{method.strip('/')}"


def request_key(method: str, message: Any, *, schema: str = "1", extra: Sequence[str] = ()) -> str:
    digest = hashlib.blake2b(canonical_bytes(message), digest_size=16).hexdigest()
    parts = [method_prefix(method, schema), *(key_part(p) for p in extra), digest]
    return ":".join(parts)
