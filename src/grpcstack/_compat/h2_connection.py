"""h2's connection for the server: open-stream count, lean HEADERS/DATA writes, lazy frame repr."""

from __future__ import annotations

import collections
import struct
from typing import Any

import h2
import h2.connection
from h2.connection import ConnectionInputs as _ConnectionInputs
from h2.connection import H2Connection
from h2.exceptions import FlowControlError as _FlowControlError
from h2.exceptions import FrameTooLargeError as _FrameTooLargeError
from h2.exceptions import ProtocolError as _H2ProtocolError
from h2.settings import SettingCodes
from h2.stream import StreamInputs as _StreamInputs
from h2.utilities import utf8_encode_headers as _utf8_encode_headers

from .h2_frame_buffer import LeanFrameBuffer

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
    #: header lists (the constant response headers, trailers) -> their bytes, :method, 1xx
    _prepared: dict[Any, tuple[Any, bytes | None, bool]] | None = None
    PREPARED_MAX = 64
    #: header names whose values are unique per call: lists with one are not kept
    UNIQUE_NAMES = frozenset({"x-correlation-id", b"x-correlation-id"})

    def _prepare_headers(
        self, headers: Any
    ) -> tuple[Any, bytes | None, bool, tuple[bytes, bytes] | None]:
        """``headers`` as bytes (a tuple) with their ``:method`` and whether they are a 1xx
        response, kept for lists that repeat (no per-call unique value in them). A last field
        whose value is unique per call (the correlation id every response's initial metadata
        ends with) is split off as bytes (the fourth item): the fields before it are kept."""
        unique = None
        if type(headers) is list and headers:
            last = headers[-1]
            if type(last) is tuple and len(last) == 2 and last[0] in self.UNIQUE_NAMES:
                unique = _bytes_pair(last)
                if unique is not None:
                    headers = headers[:-1]
        prepared = self._prepared
        if prepared is None:
            prepared = self._prepared = {}
        try:
            key = tuple(headers) if type(headers) is list else None
            hit = prepared.get(key) if key is not None else None
        except TypeError:  # something unhashable: h2 will say what is wrong with it
            key = hit = None
        if hit is None:
            bytes_headers = tuple(_encode_headers(headers))
            method, informational = _pseudo_fields(bytes_headers)
            hit = (bytes_headers, method, informational)
            if key is not None and not any(
                type(h) is tuple and h[0] in self.UNIQUE_NAMES for h in bytes_headers
            ):
                if len(prepared) >= self.PREPARED_MAX:
                    prepared.clear()
                prepared[key] = hit
        return (*hit, unique)

    def _open_streams(self, remainder: int) -> int:
        streams = self.streams
        if len(streams) < self._scan_at:
            return len(streams)  # at least the open ones of this parity
        count: int = super()._open_streams(remainder)
        self._scan_at = 2 * len(self.streams) + 32
        return count

    if LEAN_FRAMES:

        def __init__(self, config: Any = None) -> None:
            super().__init__(config)
            if not self.config.client_side:
                self.incoming_buffer = LeanFrameBuffer(server=True)

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
            bytes_headers, method, informational, unique = self._prepare_headers(headers)
            machine = stream.state_machine
            if informational:
                if end_stream:
                    raise _H2ProtocolError("Cannot set END_STREAM on informational responses.")
                machine.process_input(_StreamInputs.SEND_INFORMATIONAL_HEADERS)
            else:
                machine.process_input(_StreamInputs.SEND_HEADERS)
            block = self.encoder.encode(bytes_headers)
            if unique is not None:  # after the kept fields, as h2 would encode the whole list
                block += self.encoder.encode((unique,))
            if end_stream:
                machine.process_input(_StreamInputs.SEND_END_STREAM)
            if machine.trailers_sent and not end_stream:
                raise _H2ProtocolError("Trailers must have END_STREAM set.")
            stream.request_method = method
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


def _encode_headers(headers: Any) -> list[Any]:
    """h2's ``utf8_encode_headers`` with a shortcut for the common case (a list of plain
    2-tuples of str or bytes); anything else goes to h2's own."""
    if type(headers) is not list:
        return _utf8_encode_headers(headers)
    out = []
    for header in headers:
        pair = _bytes_pair(header)
        if pair is None:
            return _utf8_encode_headers(headers)  # HeaderTuple, 3-tuples, other types
        out.append(pair)
    return out


def _bytes_pair(header: Any) -> tuple[bytes, bytes] | None:
    """A plain 2-tuple of str or bytes as bytes (h2's utf-8 encoding); None for anything else."""
    if type(header) is not tuple or len(header) != 2:
        return None
    name, value = header
    kind = type(name)
    if kind is str:
        name = name.encode()
    elif kind is not bytes:
        return None
    kind = type(value)
    if kind is str:
        value = value.encode()
    elif kind is not bytes:
        return None
    return name, value


def _pseudo_fields(headers: Any) -> tuple[bytes | None, bool]:
    """``:method`` and whether ``:status`` is 1xx, from the leading pseudo-header fields: what
    h2's ``extract_method_header`` and ``is_informational_response`` find there (h2 sends no
    pseudo-header after a regular one: grpclib and the transport put them first)."""
    method = None
    informational = False
    seen_status = False
    for name, value in headers:
        if not name.startswith(b":"):
            break
        if name == b":method" and method is None:
            method = value
        elif name == b":status" and not seen_status:
            seen_status = True
            informational = value.startswith(b"1")
    return method, informational


class _LazyRepr:
    """What h2 passes its trace logger instead of ``repr(frame)``, evaluated only if a trace
    line is ever written (h2's default logger writes none; the repr cost ~1% of a busy server)."""

    __slots__ = ("_obj",)

    def __init__(self, obj: object) -> None:
        self._obj = obj

    def __str__(self) -> str:
        return repr(self._obj)

    __repr__ = __str__


def lazy_frame_repr() -> bool:
    """h2 4.4's ``_receive_frame`` formats ``repr(frame)`` for its trace logger on every frame
    received, even when tracing is off. ``repr`` in h2.connection (used there only) becomes a
    lazy one; the trace text is the same. Only on the h2 it was checked against."""
    if h2.__version__ not in LEAN_FRAMES_H2_VERSIONS:
        return False
    h2.connection.repr = _LazyRepr  # type: ignore[attr-defined]
    return True
