"""The server's h2 connection counts open streams without a scan per stream, and still drops
closed streams from its table (bounded by twice the live ones)."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events

from grpcstack._compat import ServerH2Connection, lift_inbound_stream_limit


def _pair() -> tuple[h2.connection.H2Connection, ServerH2Connection]:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    server = ServerH2Connection(h2.config.H2Configuration(client_side=False))
    client.initiate_connection()
    server.initiate_connection()
    lift_inbound_stream_limit(server)
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    return client, server


HEADERS = [(":method", "POST"), (":scheme", "http"), (":path", "/a"), (":authority", "x")]


def test_closed_streams_stay_bounded_and_live_ones_are_served() -> None:
    client, server = _pair()
    live: list[int] = []
    most = 0
    for i in range(2000):
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, HEADERS, end_stream=True)
        events = server.receive_data(client.data_to_send())
        assert any(isinstance(e, h2.events.RequestReceived) for e in events)
        live.append(sid)
        if len(live) > 10 or i == 1999:  # answer all but the newest few
            while len(live) > (0 if i == 1999 else 5):
                done = live.pop(0)
                server.send_headers(done, [(":status", "200")], end_stream=True)
            client.receive_data(server.data_to_send())
        most = max(most, len(server.streams))
        assert server.open_inbound_streams >= sum(s.open for s in server.streams.values())
    assert most <= 2 * 11 + 32 + 1
    assert all(s.closed for s in server.streams.values())
