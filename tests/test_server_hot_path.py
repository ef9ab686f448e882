"""The server's shortcuts around grpclib and h2 do what the code they skip does.

Each shortcut (grpcstack/_compat/grpclib_server.py, h2_connection.py; transport/head.py) is
checked against the grpclib or h2 code it stands in for, on the same inputs.
"""

from __future__ import annotations

import asyncio
import binascii
import io
import logging
import random
from typing import Any

import grpclib.events
import grpclib.protocol
import h2.connection
import pytest
from grpclib.events import RecvRequest, SendInitialMetadata, SendTrailingMetadata, listen
from grpclib.metadata import Deadline, decode_metadata
from grpclib.protocol import Buffer
from h2.utilities import extract_method_header, is_informational_response, utf8_encode_headers
from hpack.struct import NeverIndexedHeaderTuple

from grpcstack._compat import StackServerEvents, read_buffered
from grpcstack._compat.h2_connection import _encode_headers, _LazyRepr, _pseudo_fields
from grpcstack.logs import BufferedStreamHandler
from grpcstack.transport.head import HEADS_PER_CONNECTION, HeadCache, RequestHead


class _Stream:
    def __init__(self, buffer: Buffer) -> None:
        self.buffer = buffer


async def test_read_buffered_reads_and_acks_as_buffer_read_does() -> None:
    rng = random.Random(5)
    for case in range(300):
        acks_ours: list[int] = []
        acks_theirs: list[int] = []
        ours, theirs = Buffer(acks_ours.append), Buffer(acks_theirs.append)
        payload = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        pos = 0
        while pos < len(payload):  # DATA frames of random sizes, some with padding
            n = rng.randrange(1, 40)
            chunk = payload[pos : pos + n]
            pad = rng.choice([0, 0, 3])
            for buffer in (ours, theirs):
                buffer.add(chunk, len(chunk) + pad)
            pos += n
        if case % 2:
            ours.eof()
            theirs.eof()
        left = len(payload)
        while left:
            size = rng.randrange(1, left + 1)
            got = read_buffered(_Stream(ours), size)  # type: ignore[arg-type]
            assert got is not None  # all of it is buffered
            assert got == await theirs.read(size)
            assert acks_ours == acks_theirs
            assert ours._acked_size == theirs._acked_size
            left -= size
        assert read_buffered(_Stream(ours), 1) is None  # nothing left: Buffer.read decides


async def test_read_buffered_leaves_short_and_empty_reads_to_buffer_read() -> None:
    acks: list[int] = []
    buffer = Buffer(acks.append)
    buffer.add(b"abc", 3)
    assert read_buffered(_Stream(buffer), 5) is None  # not all here yet
    assert acks == []  # and nothing taken
    buffer.add(b"", 0)  # an empty DATA frame: grpclib's end mark
    buffer.add(b"de", 2)
    assert read_buffered(_Stream(buffer), 5) is None
    assert read_buffered(_Stream(buffer), 0) is None
    assert await buffer.read(3) == b"abc"


async def test_stack_server_events_dispatch_as_grpclib_does() -> None:
    class Target:
        def __init__(self, dispatch: Any) -> None:
            self.__dispatch__ = dispatch

    ours = Target(StackServerEvents())
    theirs = Target(grpclib.events._DispatchServerEvents())
    seen: dict[str, list[Any]] = {"ours": [], "theirs": []}

    def listeners(name: str, target: Target) -> None:
        async def first(event: Any) -> None:
            seen[name].append(
                (type(event).__name__, {k: getattr(event, k) for k in event.__slots__})
            )
            if isinstance(event, RecvRequest):
                event.metadata = {"changed": "1"}
                event.interrupt()
            else:
                event.metadata["x"] = "1"

        async def second(event: Any) -> None:
            seen[name].append("second")

        for kind in (RecvRequest, SendInitialMetadata, SendTrailingMetadata):
            listen(target, kind, first)
            listen(target, kind, second)

    listeners("ours", ours)
    listeners("theirs", theirs)
    results = []
    for target in (ours, theirs):
        d = target.__dispatch__
        results.append(
            (
                await d.recv_request(
                    {"a": "b"},
                    print,
                    method_name="/m",
                    deadline=None,
                    content_type="application/grpc",
                    user_agent="ua",
                    peer=None,
                ),
                await d.send_initial_metadata({}),
                await d.send_trailing_metadata(
                    {}, status=0, status_message="m", status_details=None
                ),
                await d.send_message("msg"),  # nobody listens: grpclib's _ident
            )
        )
    assert results[0] == results[1]
    assert seen["ours"] == seen["theirs"]
    with pytest.raises(AttributeError):
        event = RecvRequest.__new__(RecvRequest)
        object.__setattr__(event, "method_name", "/m")
        event.method_name = "/other"  # read-only fields stay read-only


def test_response_headers_encode_as_h2_does() -> None:
    cases: list[Any] = [
        [(":status", "200"), ("content-type", "application/grpc")],
        [(b":status", b"103"), ("x", "y")],
        [("grpc-status", "0"), ("grpc-message", "ok")],
        [(":method", "GET"), (":status", "100")],
    ]
    for headers in cases:
        ours = _encode_headers(headers)
        theirs = utf8_encode_headers(headers)
        assert ours == theirs
        assert _pseudo_fields(ours) == (
            extract_method_header(theirs),
            is_informational_response(theirs),
        )
    with pytest.raises(AttributeError):  # neither str nor bytes: h2's own error
        _encode_headers([(":status", "200"), ("x", 5)])


def test_lazy_repr_formats_as_repr() -> None:
    frame = h2.connection.HeadersFrame(1)
    assert str(_LazyRepr(frame)) == repr(frame)
    assert f"{_LazyRepr(frame)}" == repr(frame)


def test_request_head_decodes_as_dispatch_did() -> None:
    raw = [
        (b":method", b"POST"),
        (b":path", b"/echo.v1.EchoService/Echo"),
        (b"content-type", b"application/grpc"),
        (b"grpc-timeout", b"5S"),
        (b"grpc-timeout", b"200m"),
        (b"user-agent", b"grpc-go/1.0"),
        (b"x-id", b"1"),
        (b"x-id", b"2"),
        (b"trace-bin", b"AAEC"),
    ]
    head = RequestHead.decode(raw)
    text = [(n.decode(), v.decode()) for n, v in raw]
    assert list(head.headers) == text
    assert head.size == sum(len(n) + len(v) + 32 for n, v in raw)
    assert head.map == dict(text)
    assert head.user_agent == b"grpc-go/1.0"
    assert head.timeout() == 0.2  # the smallest, as Deadline.from_headers takes it
    deadline = Deadline.from_headers(text)
    assert deadline is not None and abs(deadline.time_remaining() - head.timeout()) < 0.05
    assert list(head.metadata()) == list(decode_metadata(text).items())


def test_request_head_errors_are_raised_every_time() -> None:
    head = RequestHead.decode([(b"grpc-timeout", b"soon"), (b"a-bin", b"A")])
    for _ in range(2):
        with pytest.raises(ValueError):
            head.timeout()
        with pytest.raises((binascii.Error, ValueError)):
            head.metadata()
    with pytest.raises(UnicodeDecodeError):
        RequestHead.decode([(b"x", "é".encode())])


def test_head_cache_keeps_repeated_blocks_within_bounds() -> None:
    cache = HeadCache()
    block = [(b":path", b"/a"), (b"user-agent", b"x")]
    first = cache.get(list(block))
    assert cache.get(list(block)) is first  # same block: decoded once
    for i in range(HEADS_PER_CONNECTION * 3):
        cache.get([(b"grpc-timeout", f"{i}m".encode())])
    assert len(cache._heads) <= HEADS_PER_CONNECTION
    big = [(b"x", b"v" * 5000)]
    cache.get(big)
    assert tuple(big) not in cache._heads  # large blocks are not kept
    secret = [(b":path", b"/a"), NeverIndexedHeaderTuple(b"authorization", b"Bearer t")]
    assert cache.get(secret).map["authorization"] == "Bearer t"
    assert not any(type(h) is NeverIndexedHeaderTuple for k in cache._heads for h in k)


def test_access_line_written_directly_equals_the_logged_line() -> None:
    out_direct, out_logged = io.StringIO(), io.StringIO()
    lines = []
    for out, direct in ((out_direct, True), (out_logged, False)):
        logger = logging.getLogger(f"grpcstack.test.access.{direct}")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        handler = BufferedStreamHandler(out)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.handlers = [handler]
        assert handler.takes_lines(logger, logging.INFO)
        assert not handler.takes_lines(logger, logging.DEBUG - 1) or handler.level == 0
        if direct:
            handler.write_line('{"a":1}')
        else:
            logger.info('{"a":1}')
        handler.flush()
        lines.append(out.getvalue())
        logger.addFilter(lambda record: True)
        assert not handler.takes_lines(logger, logging.INFO)  # a filter: the logger decides
        logger.handlers = []
    assert lines[0] == lines[1] == '{"a":1}\n'


class _CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        return super().write(s)


async def test_access_lines_go_out_in_one_write_whatever_the_stream_buffers() -> None:
    """PYTHONUNBUFFERED makes sys.stdout write through: the handler keeps lines itself."""
    out = _CountingStream()
    handler = BufferedStreamHandler(out, interval=0.01)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for i in range(100):
        handler.write_line(f'{{"n":{i}}}')
    assert out.writes == 0  # none written yet: within ``interval``, on the loop
    for _ in range(500):
        if out.writes:
            break
        await asyncio.sleep(0.01)
    assert out.writes == 1
    assert out.getvalue() == "".join(f'{{"n":{i}}}\n' for i in range(100))

    small = _CountingStream()
    handler = BufferedStreamHandler(small, interval=3600, max_buffered=100)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for _ in range(10):
        handler.write_line("x" * 24)  # 25 characters with the newline
    assert small.writes == 2  # at 100 and at 200 characters, not after an hour
    handler.write_line("tail")
    handler.close()  # logging.shutdown flushes and closes every handler at exit; close alone too
    assert small.getvalue().endswith("tail\n") and small.getvalue().count("\n") == 11


def test_access_lines_without_a_loop_are_written_at_once() -> None:
    out = _CountingStream()
    handler = BufferedStreamHandler(out)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.write_line("a")
    assert out.getvalue() == "a\n"


async def test_lazy_stream_events_are_asyncio_events() -> None:
    from grpcstack._compat import ServerH2Stream

    class _Conn:
        _connection = object()
        _transport = object()
        streams_started = 0
        last_stream_created = None

        def ack(self, stream_id: int, size: int) -> None:
            pass

    conn = _Conn()
    stream = ServerH2Stream(conn, 1)  # type: ignore[arg-type]
    theirs = grpclib.protocol.Stream(
        conn,  # type: ignore[arg-type]
        conn._connection,  # type: ignore[arg-type]
        conn._transport,  # type: ignore[arg-type]
        stream_id=1,
    )
    assert "window_updated" not in vars(stream)
    for name in ("window_updated", "headers_received", "trailers_received"):
        event = getattr(stream, name)
        assert isinstance(event, asyncio.Event)
        assert getattr(stream, name) is event
    assert set(vars(stream)) == set(vars(theirs))  # grpclib's attributes, none missing
    assert stream.id == 1 and stream.wrapper is None and stream.headers is None
    with pytest.raises(AttributeError):
        _ = stream.no_such_attribute


def test_prepared_response_headers_keep_repeated_lists_only() -> None:
    from h2.config import H2Configuration

    from grpcstack._compat import ServerH2Connection

    conn = ServerH2Connection(config=H2Configuration(client_side=False))
    headers = [(":status", "200"), ("content-type", "application/grpc")]
    first = conn._prepare_headers(list(headers))
    assert first == (tuple(utf8_encode_headers(headers)), None, False, None)
    assert conn._prepare_headers(list(headers))[0] is first[0]
    # a trailing correlation id is split off: the fields before it are the kept ones
    unique = [*headers, ("x-correlation-id", "0123")]
    assert conn._prepare_headers(unique) == (first[0], None, False, (b"x-correlation-id", b"0123"))
    assert conn._prepare_headers(list(unique))[0] is first[0]
    # one elsewhere in the list: the list is prepared whole and not kept
    inside = [(":status", "200"), ("x-correlation-id", "0123"), ("a", "b")]
    assert conn._prepare_headers(inside)[:3] == (tuple(utf8_encode_headers(inside)), None, False)
    assert conn._prepared is not None and len(conn._prepared) == 1
