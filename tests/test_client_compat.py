"""The grpclib/h2/hpack internals the client hooks (src/grpcstack/_compat.py, client side) are
still where it expects them: fails loudly on an upgrade that moves one."""

from __future__ import annotations

from grpclib.client import Channel
from grpclib.protocol import Connection, EventsProcessor, Stream
from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from hyperframe.frame import GoAwayFrame

from grpcstack._compat import ClientHeaderEncoder


def test_h2_and_hpack_internals() -> None:
    h2 = H2Connection(H2Configuration(client_side=True))
    assert GoAwayFrame in h2._frame_dispatch_table
    assert h2.state_machine.state is ConnectionState.IDLE
    assert hasattr(ConnectionState, "CLIENT_OPEN")
    encoder = ClientHeaderEncoder()
    assert encoder.header_table._current_size == 0
    assert len(encoder.header_table.dynamic_entries) == 0
    prefix = [(b":method", b"POST"), (b":path", b"/a.B/C")]
    first = encoder.encode([*prefix, (b"grpc-timeout", b"1S")])
    encoder.prefix_len = 2
    cached = encoder.encode([*prefix, (b"grpc-timeout", b"2S")])
    encoder.prefix_len = 2
    again = encoder.encode([*prefix, (b"grpc-timeout", b"2S")])
    assert cached == again and first != cached


async def test_grpclib_internals() -> None:
    channel = Channel("127.0.0.1", 1)
    try:
        for name in ("_protocol", "_authority", "_scheme", "_config", "_h2_config"):
            assert hasattr(channel, name), name
        assert callable(channel.__connect__)
    finally:
        channel.close()
    assert "stream_close_waiter" in Connection.__init__.__code__.co_names
    assert "write_ready" in Connection.__init__.__code__.co_names
    for name in ("register", "process_stream_reset", "process_connection_terminated", "close"):
        assert hasattr(EventsProcessor, name)
    for name in ("init_stream", "send_data", "recv_headers", "recv_trailers", "reset_nowait"):
        assert hasattr(Stream, name)
