"""HPACK with caches that hold while the dynamic table stands still (server and client side).

Every cache here asks one question: has the dynamic table changed since this block or field was
encoded or decoded? ``CountingTable`` answers it for all of them: its ``version`` counts
insertions, and every other change of the table comes with one (an eviction happens inside an
insertion) or with a change of ``maxsize`` (a resize), so ``(version, maxsize)`` names the table
exactly. A decoder also keys on its ``max_allowed_table_size``: a kept block with a size update
must fail again once the allowed size drops below it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hpack import Decoder, Encoder, HeaderTuple
from hpack.hpack import INDEX_NEVER, INDEX_NONE
from hpack.hpack import _to_bytes as _hpack_to_bytes
from hpack.struct import NeverIndexedHeaderTuple
from hpack.table import HeaderTable

HPACK_VERSION = "4.2.0"


class CountingTable(HeaderTable):
    """hpack's table with a count of insertions (``version``)."""

    version = 0

    def add(self, name: bytes, value: bytes) -> None:
        self.version += 1
        super().add(name, value)


def _use_counting_table(codec: Encoder | Decoder) -> CountingTable:
    table = CountingTable()
    table.maxsize = codec.header_table.maxsize
    table.resized = False  # a fresh codec: no size update to signal
    codec.header_table = table
    return table


# --- server side ----------------------------------------------------------------------------


class StackEncoder(Encoder):
    """HPACK encoder for responses.

    Per-call unique values (correlation ids) go out as plain never-indexed literals:
    Huffman-coding a fresh 32-character id costs ~8 us in pure Python and adding it to the
    dynamic table only evicts entries that do repeat. Every other field's encoding is kept while
    the dynamic table stands still (the constant response headers and trailers are indexed
    references after the first call): hpack searches the table and encodes every field of
    every response anew."""

    UNIQUE = frozenset({b"x-correlation-id"})
    CACHE_FIELDS = 64

    def __init__(self) -> None:
        super().__init__()
        self.header_table: CountingTable = _use_counting_table(self)
        self._fields: dict[tuple[bytes, bytes, bool], bytes] = {}
        self._fields_state: tuple[int, int] = (-1, -1)
        #: whole blocks of header tuples (ServerH2Connection passes repeated lists as the same
        #: tuple), kept and forgotten with the fields
        self._blocks: dict[tuple[Any, bool], bytes] = {}

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        if isinstance(headers, dict):
            return super().encode(headers, huffman)  # type: ignore[no-any-return]
        table = self.header_table
        parts: list[bytes] = []
        if table.resized:
            parts.append(self._encode_table_size_change())
            table.resized = False
        fields = self._fields
        state = (table.version, table.maxsize)
        if state != self._fields_state:
            fields.clear()
            self._blocks.clear()
            self._fields_state = state
        block_key = None
        if not parts and type(headers) is tuple:
            block_key = (headers, huffman)
            block = self._blocks.get(block_key)
            if block is not None:
                return block
        unique = self.UNIQUE
        keep = block_key is not None
        for header in headers:
            if type(header) is tuple and len(header) == 2:
                name, value = header
                sensitive = False
            elif isinstance(header, HeaderTuple):
                name, value = header
                sensitive = not header.indexable
            else:
                name, value = header[0], header[1]
                sensitive = bool(header[2]) if len(header) > 2 else False
            if type(name) is not bytes:
                name = _hpack_to_bytes(name)
            if type(value) is not bytes:
                value = _hpack_to_bytes(value)
            if name in unique:
                parts.append(self._unique_literal(name, value))
                keep = False
                continue
            if sensitive:  # never indexed: the table does not change
                parts.append(Encoder.add(self, (name, value), True, huffman))
                keep = False
                continue
            key = (name, value, huffman)
            encoded = fields.get(key)
            if encoded is None:
                encoded = Encoder.add(self, (name, value), False, huffman)
                if table.version == state[0]:
                    if len(fields) < self.CACHE_FIELDS:
                        fields[key] = encoded
                else:  # inserted (and perhaps evicted): every kept encoding may be stale
                    fields.clear()
                    self._blocks.clear()
                    state = self._fields_state = (table.version, table.maxsize)
                    keep = False
            parts.append(encoded)
        encoded_block = b"".join(parts)
        if keep and len(self._blocks) < self.CACHE_FIELDS:
            self._blocks[block_key] = encoded_block  # type: ignore[index]
        return encoded_block

    def add(self, to_add: tuple[bytes, bytes], sensitive: bool, huffman: bool = False) -> bytes:
        name, value = to_add
        if name in self.UNIQUE:
            return self._unique_literal(name, value)
        return super().add(to_add, sensitive, huffman)  # type: ignore[no-any-return]

    def _unique_literal(self, name: bytes, value: bytes) -> bytes:
        """hpack's never-indexed literal without Huffman (``_encode_literal(name, value,
        INDEX_NEVER, False)``), written directly while both lengths fit the 7-bit prefix: hpack
        builds each length with a debug log call and a bytearray."""
        if len(name) < 127 and len(value) < 127:
            return b"\x10%c%s%c%s" % (len(name), name, len(value), value)
        return self._encode_literal(name, value, INDEX_NEVER, False)  # type: ignore[no-any-return]


class CappedDecoder(Decoder):
    """HPACK decoder with a fixed hard cap on a header list. h2 lowers the decoder's limit to the
    advertised SETTINGS_MAX_HEADER_LIST_SIZE once acked, which makes every oversized request a
    connection error; we keep the cap above it and refuse oversized requests per stream.

    It also remembers the last few header blocks that left the dynamic table as it was (indexed
    fields and literals without indexing): a client that repeats a block while the table stands
    still (every call of a method without a deadline, from most clients) gets the same headers
    without a second pure-Python decode (~10% of a busy server). Any change of the table, its
    size or its allowed size forgets them all; blocks with a never-indexed field (credentials)
    are never kept."""

    CACHE_BLOCKS = 32
    CACHE_BLOCK_BYTES = 1024

    def __init__(self, hard_cap: int) -> None:
        self._hard_cap = hard_cap
        super().__init__()
        self.header_table: CountingTable = _use_counting_table(self)
        self._blocks: dict[tuple[bytes, bool], list[Any]] = {}
        self._blocks_state: tuple[int, int, int] = (-1, -1, -1)

    def decode(self, data: bytes, raw: bool = False) -> Any:
        if len(data) > self.CACHE_BLOCK_BYTES:
            return super().decode(data, raw)
        table = self.header_table
        state = (table.version, table.maxsize, self.max_allowed_table_size)
        blocks = self._blocks
        if state != self._blocks_state:
            blocks.clear()  # the table changed: a kept block may now mean other headers
            self._blocks_state = state
        key = (bytes(data), raw)
        hit = blocks.get(key)
        if hit is not None:
            return list(hit)
        headers = super().decode(data, raw)
        if (
            (table.version, table.maxsize, self.max_allowed_table_size) == state
            and len(blocks) < self.CACHE_BLOCKS
            and not any(type(h) is NeverIndexedHeaderTuple for h in headers)
        ):
            blocks[key] = list(headers)
        return headers

    @property  # type: ignore[override]
    def max_header_list_size(self) -> int:
        return self._hard_cap

    @max_header_list_size.setter
    def max_header_list_size(self, value: int) -> None:
        pass  # h2 sets it from our own SETTINGS: the hard cap stays


# --- client side ----------------------------------------------------------------------------
# The client speaks HTTP/2 itself (grpcstack.client.connection); only its HPACK goes through the
# hpack library, with the two caches below.


class ClientHeaderEncoder(Encoder):
    """HPACK for request headers with the per-method prefix cached.

    A request's leading headers (:method ... grpc-accept-encoding) are the same for every call of
    a method to a target. Their block is cached once encoding it leaves the dynamic table
    unchanged (from the second call on: all indexed), and reused while no other encode changes
    the table; the per-call rest (grpc-timeout, metadata) is sent as literals that never enter
    the table. A block that added entries is never replayed: the peer's table would grow while
    ours did not, and later indices would point at the wrong entries.
    """

    def __init__(self) -> None:
        super().__init__()
        self.header_table: CountingTable = _use_counting_table(self)
        #: id(prefix) -> (prefix, table state, block); the prefix is kept so the id stays valid
        self._cache: dict[int, tuple[tuple[tuple[bytes, bytes], ...], tuple[int, int], bytes]] = {}

    def encode_request(
        self, prefix: tuple[tuple[bytes, bytes], ...], rest: Iterable[tuple[bytes, bytes]]
    ) -> bytes:
        """The block for ``prefix`` (the same tuple object for every call of a method) followed
        by ``rest`` as never-indexed or non-indexed literals."""
        table = self.header_table
        state = (table.version, table.maxsize)
        cached = self._cache.get(id(prefix))
        if cached is not None and cached[0] is prefix and cached[1] == state and not table.resized:
            block = cached[2]
        else:
            block = self.encode(prefix)
            if (table.version, table.maxsize) == state:  # all indexed: safe to send again
                if len(self._cache) >= 256:
                    self._cache.clear()
                self._cache[id(prefix)] = (prefix, state, block)
        parts = None
        literal = self._encode_literal
        for name, value in rest:
            if parts is None:
                parts = [block]
            never = name == b"authorization" or name.endswith(b"-bin")
            parts.append(literal(name, value, INDEX_NEVER if never else INDEX_NONE, False))
        return block if parts is None else b"".join(parts)


class CachedHeaderDecoder(Decoder):
    """HPACK decoder that remembers blocks which left the dynamic table unchanged (a server's
    repeated response headers and trailers, once indexed): the same bytes at the same table
    state decode to the same headers, without hpack's per-header work."""

    def __init__(self) -> None:
        super().__init__()
        self.header_table: CountingTable = _use_counting_table(self)
        self._cache: dict[bytes, tuple[tuple[int, int, int], list[Any]]] = {}

    def decode(self, data: bytes, raw: bool = False) -> Any:
        table = self.header_table
        state = (table.version, table.maxsize, self.max_allowed_table_size)
        hit = self._cache.get(data)
        if hit is not None and hit[0] == state:
            return hit[1]
        headers = super().decode(data, raw)
        if (table.version, table.maxsize, self.max_allowed_table_size) == state:
            if len(self._cache) >= 256:
                self._cache.clear()
            self._cache[bytes(data)] = (state, headers)
        return headers
