"""The client's own HTTP/2 connection against the stack's server: flow control both ways with
small windows, header blocks over one frame (CONTINUATION), the server's MAX_CONCURRENT_STREAMS
(calls wait for a slot instead of being refused), keepalive PINGs answered."""

from __future__ import annotations

import asyncio
from typing import Any

from client_helpers import MetadataRecorder, client_settings, echo_server
from conftest import running, settings

from gen.echo.v1 import EchoRequest, EchoServiceStub
from grpcstack.client import Client, ClientCallInfo, ClientMiddleware


class Calls(ClientMiddleware):
    def __init__(self) -> None:
        super().__init__()
        self.done: list[ClientCallInfo] = []

    def on_done(self, call: ClientCallInfo) -> None:
        self.done.append(call)


async def test_messages_many_windows_long_travel_both_ways() -> None:
    """1.5 MB each way through 64 KiB windows: the client waits for the server's WINDOW_UPDATEs
    when sending and acks what it reads when receiving."""
    message = "x" * 1_500_000
    small = {
        "GRPC_CLIENT_HTTP2_STREAM_WINDOW_SIZE": 65_536,
        "GRPC_CLIENT_HTTP2_CONNECTION_WINDOW_SIZE": 65_536,
    }
    async with (
        echo_server() as server,
        Client(f"127.0.0.1:{server.port}", settings=client_settings(**small)) as client,
    ):
        stub = client.stub(EchoServiceStub)
        replies = await asyncio.gather(
            *(stub.echo(EchoRequest(message=message), timeout=30) for _ in range(3))
        )
        assert [len(r.message) for r in replies] == [len(message)] * 3
        assert (await stub.echo(EchoRequest(message="after"))).message == "after"


async def test_metadata_larger_than_a_frame_goes_in_continuation_frames() -> None:
    server = MetadataRecorder(
        settings(GRPC_ENABLE_RATE_LIMITING=False, GRPC_MAX_METADATA_SIZE=128 * 1024)
    )
    big = "v" * 40_000  # over the 16 KiB default frame size
    async with (
        running(server),
        Client(f"127.0.0.1:{server.port}", settings=client_settings()) as client,
    ):
        stub = client.stub(EchoServiceStub)
        reply = await stub.echo(EchoRequest(message="m"), metadata={"x-big": big})
        assert reply.message == "m"
        assert server.seen[-1][0]["x-big"] == big
        assert (await stub.echo(EchoRequest(message="again"))).message == "again"


async def test_calls_wait_for_the_servers_stream_limit_instead_of_being_refused() -> None:
    calls = Calls()
    async with (
        echo_server(GRPC_MAX_CONCURRENT_STREAMS=2) as server,
        Client(
            f"127.0.0.1:{server.port}", settings=client_settings(), middlewares=[calls]
        ) as client,
    ):
        stub = client.stub(EchoServiceStub)
        await stub.echo(EchoRequest(message="first"))  # the server's SETTINGS have arrived
        replies = await asyncio.gather(
            *(
                stub.echo(EchoRequest(message=str(i), sleep_seconds=0.05), timeout=30)
                for i in range(12)
            )
        )
        assert [r.message for r in replies] == [str(i) for i in range(12)]
        assert [c.attempts for c in calls.done] == [1] * 13
        assert all(c.transparent_retries == 0 for c in calls.done)


async def test_keepalive_pings_are_answered_during_a_long_call() -> None:
    overrides: dict[str, Any] = {"GRPC_CLIENT_KEEPALIVE_TIME_MS": 50}
    async with (
        echo_server(GRPC_KEEPALIVE_MIN_TIME_MS=10) as server,
        Client(f"127.0.0.1:{server.port}", settings=client_settings(**overrides)) as client,
    ):
        stub = client.stub(EchoServiceStub)
        reply = await stub.echo(EchoRequest(message="slow", sleep_seconds=0.4), timeout=30)
        assert reply.message == "slow"
        connection = client.pool.endpoints[0].connection
        assert connection is not None and connection.pings_acked >= 1
        assert connection.usable


async def test_a_slow_reader_of_a_stream_still_gets_every_message() -> None:
    """20 messages of 30 kB through a 64 KiB stream window while the reader pauses: what arrived
    while nobody read is acked once the reader needs more, so the server is never left waiting
    for window."""
    small = {
        "GRPC_CLIENT_HTTP2_STREAM_WINDOW_SIZE": 65_536,
        "GRPC_CLIENT_HTTP2_CONNECTION_WINDOW_SIZE": 65_536,
    }
    text = "y" * 30_000
    async with (
        echo_server() as server,
        Client(f"127.0.0.1:{server.port}", settings=client_settings(**small)) as client,
    ):
        stub = client.stub(EchoServiceStub)
        seen = []
        async for reply in stub.expand(EchoRequest(message=text, count=20), timeout=30):
            seen.append(reply.index)
            if reply.index in (0, 7):
                await asyncio.sleep(0.2)  # the server fills the window meanwhile
            assert reply.message == text
        assert seen == list(range(20))


async def test_a_burst_of_calls_goes_out_early_in_growing_writes() -> None:
    """40 calls made in one loop turn with one call in flight before: written 8 at a time
    (EARLY_FLUSH_MIN; half the calls in flight when more) as they are made, so the server starts
    on the first ones while the client still makes the others, not in one write at the end of
    the turn; every call is answered."""
    async with (
        echo_server() as server,
        Client(f"127.0.0.1:{server.port}", settings=client_settings()) as client,
    ):
        stub = client.stub(EchoServiceStub)
        assert (await stub.echo(EchoRequest(message="warm"))).message == "warm"
        connection = client.pool.endpoints[0].connection
        assert connection is not None
        transport = connection.transport
        real_write = transport.write
        requests_per_write: list[int] = []

        def recording_write(data: bytes) -> None:
            requests_per_write.append(_headers_frames(data))
            real_write(data)

        transport.write = recording_write
        try:
            replies = await asyncio.gather(
                *(stub.echo(EchoRequest(message=f"m{i}")) for i in range(40))
            )
        finally:
            transport.write = real_write
        assert [r.message for r in replies] == [f"m{i}" for i in range(40)]
        # the first call has the connection to itself (written directly), then 8 at a time
        # and the 7 left at the end of the turn
        assert [n for n in requests_per_write if n] == [1, 8, 8, 8, 8, 7]


def _headers_frames(data: bytes) -> int:
    """HEADERS frames (one per request) in what the client wrote."""
    count = pos = 0
    while pos + 9 <= len(data):
        length = int.from_bytes(data[pos : pos + 3], "big")
        count += data[pos + 3] == 0x1
        pos += 9 + length
    return count
