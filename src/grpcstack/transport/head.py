"""A request's header block, decoded once per distinct block.

A client repeats the same header block for every call of a method (HPACK makes it the same
objects even: the decoder keeps repeated blocks), so the work of turning it into what dispatch
needs (ASCII text, the header list size, a dict, the metadata, the timeout) is done once per
block and kept, per connection, while the block repeats. Everything kept is immutable: the
per-call parts (the Deadline, the metadata MultiDict) are built from it for each call. Blocks
over 4 KiB or with a never-indexed field (credentials) are decoded for their call only.
"""

from __future__ import annotations

import binascii
from typing import Any

from grpclib.metadata import decode_metadata, decode_timeout
from hpack.struct import NeverIndexedHeaderTuple

_Headers = tuple[tuple[str, str], ...]

#: distinct blocks kept per connection (a block with a per-call value, such as a client's
#: shrinking grpc-timeout, is new every call: the table is emptied when full)
HEADS_PER_CONNECTION = 32
#: larger blocks are decoded for their call only
HEAD_CACHE_MAX_SIZE = 4096


class RequestHead:
    """The decoded header block of one request (shared by every call that sent the same)."""

    __slots__ = (
        "_metadata",
        "_timeout",
        "headers",
        "map",
        "size",
        "user_agent",
    )

    def __init__(self, headers: _Headers, size: int, user_agent: bytes | None) -> None:
        self.headers = headers
        #: the header list size as RFC 9113 counts it (name + value + 32 per field)
        self.size = size
        #: the raw user-agent (the transport checks which clients ride a GOAWAY)
        self.user_agent = user_agent
        #: the last value of each header, as dict(headers) gives
        self.map = dict(headers)
        self._timeout: Any = _UNSET
        self._metadata: Any = _UNSET

    @classmethod
    def decode(cls, raw: Any) -> RequestHead:
        """From h2's header list (bytes pairs); UnicodeDecodeError on a non-ASCII byte."""
        size = 0
        headers = []
        user_agent = None
        for name, value in raw:
            size += len(name) + len(value) + 32
            headers.append((name.decode("ascii"), value.decode("ascii")))
            if name == b"user-agent":
                user_agent = value
        return cls(tuple(headers), size, user_agent)

    def timeout(self) -> float | None:
        """The smallest grpc-timeout in seconds (Deadline.from_headers' rule), None without
        one; ValueError when one is malformed (every time it is asked)."""
        timeout = self._timeout
        if timeout is _UNSET:
            try:
                timeout = min(
                    map(decode_timeout, (v for k, v in self.headers if k == "grpc-timeout")),
                    default=None,
                )
            except ValueError as exc:
                timeout = exc
            self._timeout = timeout
        if isinstance(timeout, ValueError):
            raise ValueError(str(timeout))
        return timeout  # type: ignore[no-any-return]

    def metadata(self) -> tuple[tuple[str, Any], ...]:
        """The invocation metadata as grpclib's decode_metadata gives it, as pairs; raises
        binascii.Error or ValueError on bad binary metadata (every time it is asked)."""
        metadata = self._metadata
        if metadata is _UNSET:
            try:
                metadata = tuple(decode_metadata(self.headers).items())
            except (binascii.Error, ValueError) as exc:
                metadata = exc
            self._metadata = metadata
        if isinstance(metadata, (binascii.Error, ValueError)):
            raise type(metadata)(*metadata.args)
        return metadata  # type: ignore[no-any-return]


_UNSET: Any = object()


class HeadCache:
    """The RequestHeads of one connection, by their raw header block."""

    __slots__ = ("_heads",)

    def __init__(self) -> None:
        self._heads: dict[tuple[Any, ...], RequestHead] = {}

    def get(self, raw: Any) -> RequestHead:
        key = tuple(raw)
        heads = self._heads
        head = heads.get(key)
        if head is None:
            head = RequestHead.decode(key)
            # blocks with a never-indexed field (credentials) are not kept, as in the decoder
            if head.size <= HEAD_CACHE_MAX_SIZE and not any(
                type(h) is NeverIndexedHeaderTuple for h in key
            ):
                if len(heads) >= HEADS_PER_CONNECTION:
                    heads.clear()
                heads[key] = head
        return head
