"""Every access grpcstack makes to a private part of grpclib, h2 or hpack lives in this module.

grpclib 0.4.9 (pinned in pyproject.toml) lacks what a production server and client need, so the
stack replaces a few of its private pieces. Keeping every such access here means a grpclib or h2
upgrade is checked in one place; ``tests/test_transport.py`` fails loudly when one moves. The rest
of the stack sees these pieces only through the public names defined below.

Sections: server side (protocol, handler, stream), client side (HPACK caches).
"""

from __future__ import annotations

import collections
import struct
from typing import Any

import grpclib.protocol
import grpclib.server
import h2
from h2.connection import ConnectionInputs as _ConnectionInputs
from h2.connection import H2Connection
from h2.exceptions import FlowControlError as _FlowControlError
from h2.exceptions import FrameTooLargeError as _FrameTooLargeError
from h2.exceptions import ProtocolError as _H2ProtocolError
from h2.settings import SettingCodes
from h2.stream import StreamInputs as _StreamInputs
from h2.utilities import extract_method_header as _extract_method_header
from h2.utilities import is_informational_response as _is_informational_response
from h2.utilities import utf8_encode_headers as _utf8_encode_headers
from hpack import Decoder, Encoder
from hpack.hpack import INDEX_NEVER
from hpack.struct import NeverIndexedHeaderTuple

GRPCLIB_VERSION = "0.4.9"
#: the hyperframe whose ``Flags.__init__`` ``cache_frame_flag_names`` replaces
HYPERFRAME_VERSION = "6.1.0"

# --- server side --------------------------------------------------------------------------

set_nodelay = grpclib.protocol._set_nodelay


class StackEncoder(Encoder):
    """HPACK encoder that sends per-call unique values (correlation ids) as plain never-indexed
    literals: Huffman-coding a fresh 32-character id costs ~8 us in pure Python and adding it to
    the dynamic table only evicts entries that do repeat."""

    UNIQUE = frozenset({b"x-correlation-id"})
    CACHE_FIELDS = 64

    def __init__(self) -> None:
        super().__init__()
        # a field's encoding while the dynamic table stands still (the constant response headers
        # and trailers are indexed references after the first call): hpack searches the table
        # and encodes every field of every response anew
        self._fields: dict[tuple[bytes, bytes, bool], bytes] = {}
        self._fields_head: object = None
        self._fields_sizes: tuple[int, int] = (-1, -1)

    def add(self, to_add: tuple[bytes, bytes], sensitive: bool, huffman: bool = False) -> bytes:
        name, value = to_add
        if name in self.UNIQUE:
            return self._encode_literal(name, value, INDEX_NEVER, False)  # type: ignore[no-any-return]
        if sensitive:
            return super().add(to_add, sensitive, huffman)  # type: ignore[no-any-return]
        table = self.header_table
        entries = table.dynamic_entries
        # the newest entry by identity (held here, so its id is never reused) and the sizes:
        # any insertion, eviction or resize changes one of them
        head = entries[0] if entries else None
        sizes = (table.maxsize, len(entries))
        fields = self._fields
        if head is not self._fields_head or sizes != self._fields_sizes:
            fields.clear()
            self._fields_head = head
            self._fields_sizes = sizes
        key = (name, value, huffman)
        encoded = fields.get(key)
        if encoded is not None:
            return encoded
        encoded = super().add(to_add, sensitive, huffman)
        entries = table.dynamic_entries
        if (
            (entries[0] if entries else None) is head
            and (table.maxsize, len(entries)) == sizes
            and len(fields) < self.CACHE_FIELDS
        ):
            fields[key] = encoded
        return encoded  # type: ignore[no-any-return]


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
        self._blocks: dict[tuple[bytes, bool], list[Any]] = {}
        self._blocks_head: object = None
        self._blocks_sizes: tuple[int, int, int] = (-1, -1, -1)

    def decode(self, data: bytes, raw: bool = False) -> Any:
        if len(data) > self.CACHE_BLOCK_BYTES:
            return super().decode(data, raw)
        table = self.header_table
        entries = table.dynamic_entries
        # the newest entry by identity: each insertion makes a new tuple (held here, so its id is
        # never reused); evictions come with an insertion or with a size change
        head = entries[0] if entries else None
        sizes = (table.maxsize, self.max_allowed_table_size, len(entries))
        blocks = self._blocks
        if head is not self._blocks_head or sizes != self._blocks_sizes:
            blocks.clear()  # the table changed: a kept block may now mean other headers
            self._blocks_head = head
            self._blocks_sizes = sizes
        key = (bytes(data), raw)
        hit = blocks.get(key)
        if hit is not None:
            return list(hit)
        headers = super().decode(data, raw)
        entries = table.dynamic_entries
        if (
            (entries[0] if entries else None) is head
            and (table.maxsize, self.max_allowed_table_size, len(entries)) == sizes
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


#: h2 versions whose send_headers / send_data ServerH2Connection's lean path reproduces
LEAN_FRAMES_H2_VERSIONS = frozenset({"4.4.1"})
LEAN_FRAMES = h2.__version__ in LEAN_FRAMES_H2_VERSIONS
_FRAME_HEADER = struct.Struct(">HBBBL")  # hyperframe's: 24-bit length, type, flags, stream id


class ServerH2Connection(H2Connection):
    """h2's connection with its open-stream count taken from the stream table's size.

    h2 counts open streams by scanning every stream on each new inbound stream, and that scan is
    also where it drops closed streams from its table. A server never opens streams, and its
    inbound limit is lifted (``lift_inbound_stream_limit``: the transport refuses excess streams
    itself), so the count only needs to be an upper bound: the table's size. The scan runs when
    the table has doubled since the last one, so closed streams stay bounded (2x live + 32)."""

    _scan_at = 0

    def _open_streams(self, remainder: int) -> int:
        streams = self.streams
        if len(streams) < self._scan_at:
            return len(streams)  # at least the open ones of this parity
        count: int = super()._open_streams(remainder)
        self._scan_at = 2 * len(self.streams) + 32
        return count

    if LEAN_FRAMES:
        # HEADERS and DATA on a stream the peer opened, written as h2 4.4 writes them (same
        # state machine inputs, HPACK encoder, flow control and errors) without building a
        # hyperframe object per frame: ~10% of a busy server. Anything unusual (padding,
        # priority, header validation, a stream h2 no longer holds) goes to h2's own method.

        def send_headers(
            self,
            stream_id: int,
            headers: Any,
            end_stream: bool = False,
            priority_weight: int | None = None,
            priority_depends_on: int | None = None,
            priority_exclusive: bool | None = None,
        ) -> None:
            stream = self.streams.get(stream_id)
            config = self.config
            if (
                stream is None
                or priority_weight is not None
                or priority_depends_on is not None
                or priority_exclusive is not None
                or config.validate_outbound_headers
                or config.normalize_outbound_headers
                or config.client_side
            ):
                return super().send_headers(  # type: ignore[no-any-return]
                    stream_id,
                    headers,
                    end_stream,
                    priority_weight,
                    priority_depends_on,
                    priority_exclusive,
                )
            self.state_machine.process_input(_ConnectionInputs.SEND_HEADERS)
            bytes_headers = _utf8_encode_headers(headers)
            machine = stream.state_machine
            if _is_informational_response(bytes_headers):
                if end_stream:
                    raise _H2ProtocolError("Cannot set END_STREAM on informational responses.")
                machine.process_input(_StreamInputs.SEND_INFORMATIONAL_HEADERS)
            else:
                machine.process_input(_StreamInputs.SEND_HEADERS)
            block = self.encoder.encode(bytes_headers)
            if end_stream:
                machine.process_input(_StreamInputs.SEND_END_STREAM)
            if machine.trailers_sent and not end_stream:
                raise _H2ProtocolError("Trailers must have END_STREAM set.")
            stream.request_method = _extract_method_header(bytes_headers)
            sid = stream_id & 0x7FFFFFFF
            size = self.max_outbound_frame_size
            first = 0x1 if end_stream else 0  # END_STREAM
            if len(block) <= size:
                out = _FRAME_HEADER.pack(len(block) >> 8, len(block) & 0xFF, 0x1, first | 0x4, sid)
                self._data_to_send += out + block
                return None
            chunks = [block[i : i + size] for i in range(0, len(block), size)]
            for i, chunk in enumerate(chunks):
                kind, flags = (0x1, first) if i == 0 else (0x9, 0)  # HEADERS, CONTINUATION
                if i == len(chunks) - 1:
                    flags |= 0x4  # END_HEADERS
                out = _FRAME_HEADER.pack(len(chunk) >> 8, len(chunk) & 0xFF, kind, flags, sid)
                self._data_to_send += out + chunk
            return None

        def send_data(
            self,
            stream_id: int,
            data: bytes | memoryview,
            end_stream: bool = False,
            pad_length: Any = None,
        ) -> None:
            stream = self.streams.get(stream_id)
            if stream is None or pad_length is not None:
                return super().send_data(  # type: ignore[no-any-return]
                    stream_id, data, end_stream, pad_length
                )
            frame_size = len(data)
            window = min(self.outbound_flow_control_window, stream.outbound_flow_control_window)
            if frame_size > 0 and frame_size > window:
                raise _FlowControlError(
                    f"Cannot send {frame_size} bytes, flow control window is {window}"
                )
            if frame_size > self.max_outbound_frame_size:
                raise _FrameTooLargeError(
                    f"Cannot send frame size {frame_size}, max frame size is "
                    f"{self.max_outbound_frame_size}"
                )
            self.state_machine.process_input(_ConnectionInputs.SEND_DATA)
            machine = stream.state_machine
            machine.process_input(_StreamInputs.SEND_DATA)
            if isinstance(data, memoryview):
                data = data.tobytes()
            if end_stream:
                machine.process_input(_StreamInputs.SEND_END_STREAM)
            stream.outbound_flow_control_window -= frame_size
            header = _FRAME_HEADER.pack(
                frame_size >> 8, frame_size & 0xFF, 0x0, 0x1 if end_stream else 0, stream_id
            )
            self._data_to_send += header + data
            self.outbound_flow_control_window -= frame_size
            return None


def lift_inbound_stream_limit(h2_conn: H2Connection) -> None:
    """h2 turns the stream after MAX_CONCURRENT_STREAMS into a connection error (every call on the
    connection lost). The advertised value stays; the transport refuses excess streams itself with
    RST_STREAM(REFUSED_STREAM), which clients retry (RFC 9113 5.1.2)."""
    h2_conn.local_settings._settings[SettingCodes.MAX_CONCURRENT_STREAMS] = collections.deque(
        [2**31 - 1]
    )


_FLAG_NAMES: dict[int, tuple[list[Any], frozenset[str]]] = {}


def _cached_flags_init(self: Any, defined_flags: list[Any]) -> None:
    # hyperframe builds the set of valid flag names of a frame's class for every frame (a set
    # comprehension per frame, ~6% of a busy server): the class's list is a constant, so once
    entry = _FLAG_NAMES.get(id(defined_flags))
    if entry is None or entry[0] is not defined_flags:
        entry = (defined_flags, frozenset(flag.name for flag in defined_flags))
        _FLAG_NAMES[id(defined_flags)] = entry  # holds the list: its id is never reused
    self._valid_flags = entry[1]
    self._flags = set()


def cache_frame_flag_names() -> bool:
    """Make hyperframe's ``Flags`` reuse one frozenset of valid names per frame class (the same
    checks, same errors). Only on the hyperframe it was written against; True when in place."""
    import hyperframe
    import hyperframe.flags

    if hyperframe.__version__ != HYPERFRAME_VERSION:
        return False
    hyperframe.flags.Flags.__init__ = _cached_flags_init  # type: ignore[method-assign]
    return True


def drop_buffered(stream: grpclib.protocol.Stream) -> None:
    """Release the bytes a reset or abandoned stream still holds (acked and not yet read)."""
    buffer = stream.buffer
    buffer._acked.clear()
    buffer._acked_size = 0
    while not buffer._unacked.empty():
        buffer._unacked.get_nowait()


def buffered_bytes(stream: grpclib.protocol.Stream) -> int:
    """Bytes of a stream's request body already received and not yet read."""
    buffer = stream.buffer
    queued = buffer._unacked._queue  # asyncio.Queue's deque
    return buffer._acked_size + sum(item.data_size for item in queued)  # type: ignore[no-any-return]


class ServerStreamBase(grpclib.server.Stream):  # type: ignore[type-arg]
    """grpclib's server Stream with its private state under public names for our subclass."""

    @property
    def h2_stream(self) -> grpclib.protocol.Stream:
        return self._stream  # type: ignore[no-any-return]

    @property
    def method_name(self) -> str:
        return self._method_name  # type: ignore[no-any-return]

    @property
    def server_streaming(self) -> bool:
        return self._cardinality.server_streaming  # type: ignore[no-any-return]

    @property
    def recv_type(self) -> type:
        return self._recv_type  # type: ignore[no-any-return]

    @property
    def send_type(self) -> type:
        return self._send_type  # type: ignore[no-any-return]

    @property
    def codec(self) -> Any:
        return self._codec

    @property
    def events(self) -> Any:
        return self._dispatch

    @property
    def content_type(self) -> str:
        return self._content_type  # type: ignore[no-any-return]

    @property
    def initial_metadata_sent(self) -> bool:
        return self._send_initial_metadata_done  # type: ignore[no-any-return]

    @property
    def message_sent(self) -> bool:
        return self._send_message_done  # type: ignore[no-any-return]

    def note_initial_metadata_sent(self) -> None:
        self._send_initial_metadata_done = True

    def note_message_received(self) -> None:
        self._messages_received += 1

    def note_message_sent(self) -> None:
        self._send_message_done = True
        self._messages_sent += 1


class ServerHandlerBase(grpclib.server.Handler):
    """grpclib's per-connection Handler with its task table under public names."""

    @property
    def tasks(self) -> dict[Any, Any]:
        return self._tasks  # type: ignore[no-any-return]

    @property
    def cancelled_tasks(self) -> set[Any]:
        return self._cancelled  # type: ignore[no-any-return]

    def gc_step(self) -> None:
        self.__gc_step__()


class ServerBase(grpclib.server.Server):
    """grpclib's Server with the private state our protocol factory needs under public names."""

    @property
    def mapping(self) -> dict[str, Any]:
        return self._mapping  # type: ignore[no-any-return]

    @property
    def codec(self) -> Any:
        return self._codec

    @property
    def status_details_codec(self) -> Any:
        return self._status_details_codec

    @property
    def grpclib_config(self) -> Any:
        return self._config

    @property
    def h2_config(self) -> Any:
        return self._h2_config

    @property
    def handlers(self) -> set[Any]:
        return self._handlers  # type: ignore[no-any-return]

    @property
    def asyncio_server(self) -> Any:
        return self._server

    def gc_step(self) -> None:
        self.__gc_step__()

    def _protocol_factory(self) -> Any:
        return self.protocol_factory()

    def protocol_factory(self) -> Any:
        raise NotImplementedError


# --- client side --------------------------------------------------------------------------
# The client speaks HTTP/2 itself (grpcstack.client.connection); only its HPACK goes through the
# hpack library, with the two caches below.

from typing import Any as _Any  # noqa: E402

from hpack.hpack import INDEX_NEVER as _INDEX_NEVER  # noqa: E402
from hpack.hpack import INDEX_NONE as _INDEX_NONE  # noqa: E402
from hpack.hpack import Encoder as _HpackEncoder  # noqa: E402


def _count_insertions(codec: _Any) -> None:
    """Make ``codec._version`` count insertions into its HPACK dynamic table (evictions come
    with an insertion or a resize, which the callers compare on their own)."""
    table = codec.header_table
    table_add = table.add

    def counting_add(name: bytes, value: bytes) -> _Any:
        codec._version += 1
        return table_add(name, value)

    table.add = counting_add


class ClientHeaderEncoder(_HpackEncoder):
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
        self._version = 0
        #: id(prefix) -> (prefix, table version, block); the prefix is kept so the id stays valid
        self._cache: dict[int, tuple[tuple[tuple[bytes, bytes], ...], int, bytes]] = {}
        _count_insertions(self)

    def encode_request(
        self, prefix: tuple[tuple[bytes, bytes], ...], rest: list[tuple[bytes, bytes]]
    ) -> bytes:
        """The block for ``prefix`` (the same tuple object for every call of a method) followed
        by ``rest`` as never-indexed or non-indexed literals."""
        cached = self._cache.get(id(prefix))
        if (
            cached is not None
            and cached[0] is prefix
            and cached[1] == self._version
            and not self.header_table.resized
        ):
            block = cached[2]
        else:
            version = self._version
            block = self.encode(prefix)
            if self._version == version:  # all indexed: safe to send again
                if len(self._cache) >= 256:
                    self._cache.clear()
                self._cache[id(prefix)] = (prefix, version, block)
        if not rest:
            return block
        literal = self._encode_literal
        parts = [block]
        for name, value in rest:
            never = name == b"authorization" or name.endswith(b"-bin")
            parts.append(literal(name, value, _INDEX_NEVER if never else _INDEX_NONE, False))
        return b"".join(parts)


class CachedHeaderDecoder(Decoder):
    """HPACK decoder that remembers blocks which left the dynamic table unchanged (a server's
    repeated response headers and trailers, once indexed): the same bytes at the same table
    version decode to the same headers, without hpack's per-header work."""

    def __init__(self) -> None:
        super().__init__()
        self._version = 0
        self._cache: dict[bytes, tuple[tuple[int, int], list[_Any]]] = {}
        _count_insertions(self)

    def decode(self, data: bytes, raw: bool = False) -> _Any:
        state = (self._version, self.header_table.maxsize)
        hit = self._cache.get(data)
        if hit is not None and hit[0] == state:
            return hit[1]
        headers = super().decode(data, raw)
        if (self._version, self.header_table.maxsize) == state:
            if len(self._cache) >= 256:
                self._cache.clear()
            self._cache[bytes(data)] = (state, headers)
        return headers


# --- web side (grpcstack.web: Connect and gRPC-Web over the same handlers) ----------------------


def server_dispatch(server: object) -> object:
    """grpclib's event dispatcher of a Server (where the middleware chain listens)."""
    return server.__dispatch__  # type: ignore[attr-defined]
