"""The server's lean HEADERS/DATA path writes exactly the bytes h2 writes, moves the same state
machines and windows, and fails the same way (_compat.ServerH2Connection)."""

from __future__ import annotations

from typing import Any

import h2
import h2.config
import h2.connection
import h2.exceptions
import hpack
import pytest
from h2.frame_buffer import FrameBuffer
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grpcstack import _compat
from grpcstack._compat import ServerH2Connection
from grpcstack._compat.h2_frame_buffer import LeanFrameBuffer


def _config() -> h2.config.H2Configuration:
    return h2.config.H2Configuration(
        client_side=False,
        header_encoding=None,
        validate_inbound_headers=False,
        validate_outbound_headers=False,
        normalize_inbound_headers=False,
        normalize_outbound_headers=False,
    )


def _trio(streams: int) -> tuple[h2.connection.H2Connection, ServerH2Connection]:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    for _ in range(streams):
        sid = client.get_next_available_stream_id()
        client.send_headers(
            sid, [(":method", "POST"), (":path", "/a"), (":scheme", "http"), (":authority", "x")]
        )
        client.send_data(sid, b"\x00\x00\x00\x00\x01x", end_stream=sid % 4 == 1)
    wire = client.data_to_send()
    plain = h2.connection.H2Connection(_config())
    lean = ServerH2Connection(_config())
    for conn in (plain, lean):
        conn.initiate_connection()
        conn.receive_data(wire)
    return plain, lean


def _same(plain: h2.connection.H2Connection, lean: ServerH2Connection) -> None:
    assert lean.data_to_send() == plain.data_to_send()
    assert lean.outbound_flow_control_window == plain.outbound_flow_control_window
    # ServerH2Connection drops closed streams later than h2 (see test_h2_stream_table)
    assert set(lean.streams) >= set(plain.streams)
    assert all(lean.streams[sid].closed for sid in set(lean.streams) - set(plain.streams))
    for sid, stream in plain.streams.items():
        other = lean.streams[sid]
        assert other.state_machine.state == stream.state_machine.state, sid
        assert other.outbound_flow_control_window == stream.outbound_flow_control_window
        assert other.state_machine.trailers_sent == stream.state_machine.trailers_sent
        assert other.request_method == stream.request_method


def _both(plain: Any, lean: Any, method: str, *args: Any, **kwargs: Any) -> None:
    errors = []
    for conn in (plain, lean):
        try:
            getattr(conn, method)(*args, **kwargs)
            errors.append(None)
        except h2.exceptions.H2Error as exc:
            errors.append((type(exc), str(exc)))
    assert errors[0] == errors[1]


def test_lean_path_is_on_for_the_pinned_h2() -> None:
    assert h2.__version__ in _compat.LEAN_FRAMES_H2_VERSIONS, (
        "h2 changed: re-check ServerH2Connection.send_headers / send_data against h2's "
        "H2Connection and H2Stream send_headers / send_data, then update the versions"
    )
    assert _compat.LEAN_FRAMES
    assert "send_headers" in vars(ServerH2Connection)


def test_unary_answers_and_streams_write_what_h2_writes() -> None:
    plain, lean = _trio(8)
    _same(plain, lean)
    ok = [(":status", "200"), ("content-type", "application/grpc")]
    trailers = [("grpc-status", "0"), ("grpc-message", "")]
    for sid in (1, 3, 5, 7, 9, 11, 13, 15):
        # most responses end their initial metadata with a per-call correlation id (split off
        # and encoded after the kept fields: the same bytes as the whole list)
        cid = [("x-correlation-id", f"{sid:032x}")] if sid % 4 != 1 else []
        _both(plain, lean, "send_headers", sid, [*ok, *cid])
        _both(plain, lean, "send_data", sid, b"\x00\x00\x00\x00\x02ok")
        _both(plain, lean, "send_data", sid, memoryview(b"\x00\x00\x00\x00\x01z"))
        if sid % 3:
            _both(plain, lean, "send_headers", sid, trailers, end_stream=True)
        else:
            _both(plain, lean, "send_data", sid, b"", end_stream=True)
        _same(plain, lean)


def test_edges_and_errors_match_h2() -> None:
    plain, lean = _trio(6)
    big = [(":status", "200"), ("x-big", "v" * 40_000)]  # HEADERS + CONTINUATION frames
    _both(plain, lean, "send_headers", 1, big)
    _same(plain, lean)
    _both(plain, lean, "send_headers", 3, [(":status", "100")])  # informational
    _both(plain, lean, "send_headers", 3, [(":status", "100")], end_stream=True)
    _both(plain, lean, "send_headers", 3, [(":status", "200")])
    _both(plain, lean, "send_headers", 3, [("grpc-status", "0")])  # trailers need END_STREAM
    _same(plain, lean)
    _both(plain, lean, "send_data", 5, b"x" * 20_000)  # over the max frame size
    _both(plain, lean, "send_headers", 5, [(":status", "200")], end_stream=True)
    _both(plain, lean, "send_data", 5, b"late")  # stream closed
    _both(plain, lean, "send_headers", 5, [(":status", "200")])
    _both(plain, lean, "send_headers", 99, [(":status", "200")])  # never opened
    _both(plain, lean, "send_data", 7, b"x", pad_length=3)  # h2's own path
    _same(plain, lean)
    for conn in (plain, lean):  # exhaust the connection window: both refuse the same way
        conn.outbound_flow_control_window = 3
    _both(plain, lean, "send_data", 9, b"xxxx")
    _both(plain, lean, "send_data", 9, b"xxx")
    _same(plain, lean)


def test_reset_stream_and_goaway_still_work() -> None:
    plain, lean = _trio(2)
    for conn in (plain, lean):
        conn.reset_stream(1)
    _both(plain, lean, "send_headers", 1, [(":status", "200")])
    _same(plain, lean)
    with pytest.raises(h2.exceptions.StreamClosedError):
        lean.send_data(1, b"x")


# --- receiving: LeanFrameBuffer ----------------------------------------------------------------

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_REQUEST = [(b":method", b"POST"), (b":path", b"/a"), (b":scheme", b"http"), (b":authority", b"x")]


@st.composite
def _wire(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    """A client's frames as a peer may send them (valid or not), and where its reads split."""
    encoder = hpack.Encoder()
    out = [_PREFACE, SettingsFrame(0).serialize()]
    sid = 1
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(
            st.sampled_from(
                ["headers", "headers", "data", "data", "ping", "window", "rst", "junk", "big"]
            )
        )
        target = draw(st.sampled_from([sid, sid, max(1, sid - 2), 0]))
        flags = set(draw(st.sets(st.sampled_from(["END_STREAM", "PADDED", "PRIORITY", "SPLIT"]))))
        pad = draw(st.integers(0, 5)) if "PADDED" in flags else 0
        if kind == "headers":
            extra = [(b"x-n", str(draw(st.integers(0, 3))).encode())]
            block = encoder.encode(_REQUEST + extra if target == sid else [(b"grpc-x", b"1")])
            head = HeadersFrame(target or 1, pad_length=pad)
            head.stream_id = target  # 0 is refused by h2: built here, not by hyperframe
            head.flags |= flags & {"END_STREAM", "PADDED", "PRIORITY"}
            if "PRIORITY" in flags:
                head.depends_on, head.stream_weight = draw(st.integers(0, 9)), 16
            if "SPLIT" in flags and len(block) > 2:
                head.data = block[:2]
                more = ContinuationFrame(target or 1, data=block[2:])
                more.stream_id = target
                more.flags.add("END_HEADERS")
                out += [head.serialize(), more.serialize()]
            else:
                head.data = block
                head.flags.add("END_HEADERS")
                out.append(head.serialize())
            if target == sid:
                sid += 2
        elif kind == "data":
            body = draw(st.binary(max_size=40))
            frame = DataFrame(target or 1, data=body, pad_length=pad)
            frame.stream_id = target
            frame.flags |= flags & {"END_STREAM", "PADDED"}
            out.append(frame.serialize())
        elif kind == "ping":
            out.append(PingFrame(0, opaque_data=b"12345678").serialize())
        elif kind == "window":
            increment = draw(st.sampled_from([1, 7, 0, 2**31 - 1, 2**31, 2**32 - 1]))
            body = increment.to_bytes(4, "big") + draw(st.sampled_from([b"", b"", b"x"]))
            head = len(body).to_bytes(3, "big") + b"\x08" + bytes([draw(st.integers(0, 255))])
            out.append(head + target.to_bytes(4, "big") + body)
        elif kind == "rst":
            out.append(RstStreamFrame(target or 1).serialize())
        elif kind == "junk":  # an unknown frame type, a bad length
            out.append(bytes([0, 0, 2, 0xEE, 0, 0, 0, 0, 1, 7, 7]))
        else:  # over the max frame size (16384)
            out.append(b"\x00\x40\x01\x00\x00\x00\x00\x00\x01" + b"z" * 16385)
    wire = b"".join(out)
    cuts = sorted(draw(st.lists(st.integers(1, max(1, len(wire) - 1)), max_size=6)))
    return wire, cuts


def _feed(conn: h2.connection.H2Connection, wire: bytes, cuts: list[int]) -> list[str]:
    seen = []
    for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        try:
            seen += [repr(e) for e in conn.receive_data(wire[start:end])]
        except h2.exceptions.H2Error as exc:
            seen.append(f"{type(exc).__name__}: {exc}")
            break
    return [*seen, repr(conn.data_to_send())]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_wire())
def test_lean_frame_buffer_gives_h2_the_same_frames(wire: tuple[bytes, list[int]]) -> None:
    """Whatever a client sends, however its reads split: the same events, errors and answers."""
    plain = h2.connection.H2Connection(_config())
    lean = ServerH2Connection(_config())
    assert type(lean.incoming_buffer).__name__ == "LeanFrameBuffer"
    for conn in (plain, lean):
        conn.initiate_connection()
        conn.data_to_send()
    assert _feed(lean, *wire) == _feed(plain, *wire)


def _fields(frame: Any) -> dict[str, Any]:
    fields = dict(vars(frame))
    fields["flags"] = set(frame.flags)
    fields["valid_flags"] = set(frame.flags._valid_flags)
    return {"class": type(frame), **fields}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_wire())
def test_lean_frames_have_every_field_hyperframe_gives(wire: tuple[bytes, list[int]]) -> None:
    data, _ = wire
    frames = []
    for buffer in (FrameBuffer(server=True), LeanFrameBuffer(server=True)):
        buffer.max_frame_size = 16384
        buffer.add_data(data)
        got = []
        try:
            got = [_fields(f) for f in buffer]
        except h2.exceptions.H2Error as exc:
            got.append({"error": repr(exc)})
        frames.append(got)
    assert frames[1] == frames[0]
