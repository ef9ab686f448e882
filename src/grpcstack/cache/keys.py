"""Cache keys: method plus a canonical encoding of the request, salted with a schema version.

``bytes(msg)`` of betterproto2 is not canonical (map entries follow insertion order), so the
request is re-encoded through the upb class built from the message's own descriptor with
``deterministic=True``: equal messages give equal keys, whatever their map order.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from google.protobuf import message_factory
from google.protobuf.message import Message as ProtobufMessage

from ..codec import Unsupported, plan

_UPB: dict[type, Any] = {}  # class -> upb class, or None when it has no maps
_MISSING = object()
_SAFE = "-._~@+=,"  # everything else, ':' and glob characters included, is percent-encoded


def _has_maps(descriptor: Any, seen: set[str] | None = None) -> bool:
    seen = set() if seen is None else seen
    if descriptor.full_name in seen:
        return False
    seen.add(descriptor.full_name)
    for field in descriptor.fields:
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry or _has_maps(field.message_type, seen):
            return True
    return False


def _encode(message: Any) -> bytes:
    try:
        return plan.encoder(type(message))(message)
    except Unsupported:
        return bytes(message)


def canonical_bytes(message: Any) -> bytes:
    """Wire bytes that equal messages share. Without maps anywhere in the message, the
    field-ordered encoding already is canonical; with maps, upb re-encodes deterministically."""
    cls = type(message)
    if isinstance(message, ProtobufMessage):  # already a protobuf (upb) message
        return message.SerializeToString(deterministic=True)
    upb = _UPB.get(cls, _MISSING)
    if upb is _MISSING:
        descriptor = cls.DESCRIPTOR
        upb = _UPB[cls] = (
            message_factory.GetMessageClass(descriptor) if _has_maps(descriptor) else None
        )
    if upb is None:
        return _encode(message)
    return upb.FromString(_encode(message)).SerializeToString(deterministic=True)  # type: ignore[no-any-return]


@functools.lru_cache(maxsize=4096)  # caller scopes and schemas repeat on every call
def key_part(value: str) -> str:
    return quote(value, safe=_SAFE)


@functools.lru_cache(maxsize=1024)
def method_prefix(method: str, schema: str) -> str:
    """Every key of one method starts with this. The method is a Redis Cluster {hash tag}: its
    entries and its generation counter share one slot (the versioned write reads both)."""
    return f"v{key_part(schema)}:{{{method.strip('/')}}}"


def request_key(
    method: str,
    message: Any,
    *,
    schema: str = "1",
    extra: Sequence[str] = (),
    material: str | None = None,
) -> str:
    """``material`` (from ``@cached(key=...)``) replaces the request's canonical bytes."""
    raw = canonical_bytes(message) if material is None else b"k\0" + material.encode()
    digest = hashlib.blake2b(raw, digest_size=16).hexdigest()
    parts = [method_prefix(method, schema), *(key_part(p) for p in extra), digest]
    return ":".join(parts)
