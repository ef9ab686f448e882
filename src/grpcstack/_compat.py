"""Every access grpcstack makes to a private part of grpclib, h2 or hpack lives in this module.

grpclib 0.4.9 (pinned in pyproject.toml) lacks what a production server and client need, so the
stack replaces a few of its private pieces. Keeping every such access here means a grpclib or h2
upgrade is checked in one place; ``tests/test_transport.py`` fails loudly when one moves. The rest
of the stack sees these pieces only through the public names defined below.

Sections: server side (protocol, handler, stream), client side (HPACK caches).
"""

from __future__ import annotations

import collections
from typing import Any

import grpclib.protocol
import grpclib.server
from h2.connection import H2Connection
from h2.settings import SettingCodes
from hpack import Decoder, Encoder
from hpack.hpack import INDEX_NEVER

GRPCLIB_VERSION = "0.4.9"

# --- server side --------------------------------------------------------------------------

set_nodelay = grpclib.protocol._set_nodelay


class StackEncoder(Encoder):
    """HPACK encoder that sends per-call unique values (correlation ids) as plain never-indexed
    literals: Huffman-coding a fresh 32-character id costs ~8 us in pure Python and adding it to
    the dynamic table only evicts entries that do repeat."""

    UNIQUE = frozenset({b"x-correlation-id"})

    def add(self, to_add: tuple[bytes, bytes], sensitive: bool, huffman: bool = False) -> bytes:
        name, value = to_add
        if name in self.UNIQUE:
            return self._encode_literal(name, value, INDEX_NEVER, False)  # type: ignore[no-any-return]
        return super().add(to_add, sensitive, huffman)  # type: ignore[no-any-return]


class CappedDecoder(Decoder):
    """HPACK decoder with a fixed hard cap on a header list. h2 lowers the decoder's limit to the
    advertised SETTINGS_MAX_HEADER_LIST_SIZE once acked, which makes every oversized request a
    connection error; we keep the cap above it and refuse oversized requests per stream."""

    def __init__(self, hard_cap: int) -> None:
        self._hard_cap = hard_cap
        super().__init__()

    @property  # type: ignore[override]
    def max_header_list_size(self) -> int:
        return self._hard_cap

    @max_header_list_size.setter
    def max_header_list_size(self, value: int) -> None:
        pass  # h2 sets it from our own SETTINGS: the hard cap stays


def lift_inbound_stream_limit(h2_conn: H2Connection) -> None:
    """h2 turns the stream after MAX_CONCURRENT_STREAMS into a connection error (every call on the
    connection lost). The advertised value stays; the transport refuses excess streams itself with
    RST_STREAM(REFUSED_STREAM), which clients retry (RFC 9113 5.1.2)."""
    h2_conn.local_settings._settings[SettingCodes.MAX_CONCURRENT_STREAMS] = collections.deque(
        [2**31 - 1]
    )


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
        table = self.header_table
        table_add = table.add

        def counting_add(name: bytes, value: bytes) -> _Any:
            self._version += 1
            return table_add(name, value)

        table.add = counting_add  # type: ignore[method-assign]

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
        table = self.header_table
        table_add = table.add

        def counting_add(name: bytes, value: bytes) -> _Any:
            self._version += 1
            return table_add(name, value)

        table.add = counting_add  # type: ignore[method-assign]

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
