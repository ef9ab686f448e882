"""Hostile HTTP/2 peers: each attack stays at the stream or connection that made it."""

from __future__ import annotations

import asyncio
import time

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
from conftest import channel, running, settings
from grpclib.const import Status
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest
from server_metrics import handled

from gen.echo.v1 import EchoRequest, EchoServiceStub
from hostile.h2peer import ECHO, Peer, frame
from platform_services.echo import EchoServer


def body(message: str = "hi", sleep: float = 0.0) -> bytes:
    return frame(bytes(EchoRequest(message=message, sleep_seconds=sleep)))


def sample(server: EchoServer, name: str, **labels: str) -> float:
    return server.metrics_registry.get_sample_value(name, labels) or 0.0


async def test_excess_stream_is_refused_and_the_connection_lives() -> None:
    server = EchoServer(settings(GRPC_MAX_CONCURRENT_STREAMS=4))
    async with running(server):
        peer = await Peer.connect(server.port)
        try:
            # five at once, before the client has seen the server's SETTINGS
            sids = [peer.request(body(str(i), sleep=0.3)) for i in range(5)]
            await peer.wait_for(lambda: all(peer.status(s) is not None for s in sids[:4]))
            assert [peer.status(s) for s in sids[:4]] == [0, 0, 0, 0]
            assert peer.reset_codes() == {sids[4]: h2.errors.ErrorCodes.REFUSED_STREAM}
            assert peer.goaway() is None
            local = peer.h2.remote_settings
            assert local.max_concurrent_streams == 4
            assert local.max_header_list_size == 16 * 1024
            again = peer.request(body("after"))  # the connection still serves
            await peer.wait_for(lambda: peer.status(again) is not None)
            assert peer.status(again) == 0
        finally:
            await peer.close()
        assert (
            sample(server, "grpcstack_refused_streams_total", reason="max_concurrent_streams") == 1
        )


async def test_rapid_reset_flood_gets_goaway_and_runs_no_call() -> None:
    server = EchoServer(settings(GRPC_ENABLE_AUTH=True))
    async with running(server), channel(server) as ch:
        health = HealthStub(ch)
        await health.Check(HealthCheckRequest())
        latencies: list[float] = []
        flooding = True

        async def probe() -> None:
            while flooding:
                start = time.perf_counter()
                await health.Check(HealthCheckRequest())
                latencies.append(time.perf_counter() - start)
                await asyncio.sleep(0.005)

        # the flood is encoded before it is sent: the test shares the loop with the server
        flood = _rapid_reset_flood(20_000)
        prober = asyncio.create_task(probe())
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        received = bytearray()
        try:
            for start in range(0, len(flood), 64 * 1024):
                writer.write(flood[start : start + 64 * 1024])
                try:
                    await writer.drain()
                except ConnectionError:
                    break
            async with asyncio.timeout(10):
                while chunk := await reader.read(65536):
                    received += chunk
        finally:
            flooding = False
            writer.close()
            await prober
        watcher = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        watcher.initiate_connection()
        goaways = [
            e
            for e in watcher.receive_data(bytes(received))
            if isinstance(e, h2.events.ConnectionTerminated)
        ]
        assert [g.error_code for g in goaways] == [h2.errors.ErrorCodes.ENHANCE_YOUR_CALM]
        # no reset stream ran a handler or a middleware hook (auth would have refused them)
        assert not server.echo.started.is_set()
        assert (
            sample(
                server,
                "grpc_server_started_total",
                grpc_service="echo.v1.EchoService",
                grpc_method="Echo",
                grpc_type="unary",
            )
            == 0
        )
        assert sample(server, "grpcstack_goaways_sent_total", reason="too_many_resets") == 1
        latencies.sort()
        p99 = latencies[int(len(latencies) * 0.99) - 1] if latencies else 0.0
        print(f"health p99 during the flood: {p99 * 1000:.1f} ms over {len(latencies)} calls")
        assert p99 < 2.0  # the target (100 ms) is a benchmark's; a test only bounds it loosely


def _rapid_reset_flood(pairs: int) -> bytes:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    headers = _headers()
    for _ in range(pairs):
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, headers)
        client.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
    return client.data_to_send()


def _headers() -> list[tuple[str, str]]:
    from hostile.h2peer import grpc_headers

    return grpc_headers(ECHO)


async def test_bad_headers_are_answered_on_their_stream() -> None:
    server = EchoServer(settings(GRPC_ENABLE_AUTH=True))
    async with running(server):
        peer = await Peer.connect(server.port, validate=False)
        try:
            bad_bin = peer.request(body(), ECHO, ("trace-bin", "!!!not base64!!!"))
            two_ids = peer.request(body(), ECHO, ("user-id", "alice"), ("user-id", "bob"))
            expired = [
                peer.request(body(), ECHO, ("grpc-timeout", t), ("user-id", "alice"))
                for t in ("0S", "1n", "1u")
            ]
            big = peer.request(body(), ECHO, ("x-big", "a" * 20_000), ("user-id", "alice"))
            await peer.wait_for(
                lambda: all(peer.status(s) is not None for s in (bad_bin, two_ids, big, *expired))
            )
            assert peer.status(bad_bin) == Status.INVALID_ARGUMENT.value
            assert peer.status(two_ids) == Status.UNAUTHENTICATED.value
            assert "more than once" in (peer.message(two_ids) or "")
            assert [peer.status(s) for s in expired] == [Status.DEADLINE_EXCEEDED.value] * 3
            assert peer.status(big) == Status.RESOURCE_EXHAUSTED.value
            # a non-ASCII byte in a header value: this stream's error only
            sid = peer.h2.get_next_available_stream_id()
            hdrs = [(n.encode(), v.encode()) for n, v in _headers()] + [(b"x-name", b"caf\xc3\xa9")]
            peer.h2.send_headers(sid, hdrs, end_stream=False)
            peer.h2.send_data(sid, body(), end_stream=True)
            peer.flush()
            ok = peer.request(body("still here"), ECHO, ("user-id", "alice"))
            await peer.wait_for(
                lambda: peer.status(sid) is not None and peer.status(ok) is not None
            )
            assert peer.status(sid) == Status.INTERNAL.value
            assert peer.status(ok) == 0
            assert peer.goaway() is None
        finally:
            await peer.close()
    assert (
        sample(
            server,
            "grpc_server_handled_total",
            grpc_service="echo.v1.EchoService",
            grpc_method="Echo",
            grpc_type="unary",
            grpc_code="DeadlineExceeded",
        )
        == 3
    )


async def test_a_huge_header_block_ends_with_goaway_not_a_silent_close() -> None:
    server = EchoServer(settings())
    async with running(server):
        peer = await Peer.connect(server.port, validate=False)
        try:
            many = [(f"x-h{i}", "v" * 100) for i in range(10_000)]
            peer.request(body(), ECHO, *many)
            await peer.wait_for(lambda: peer.closed)
            goaway = peer.goaway()
            assert goaway is not None
            assert goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM  # h2: DoS
        finally:
            await peer.close()
        async with channel(server) as ch:  # the server is fine
            assert (await EchoServiceStub(ch).echo(EchoRequest(message="ok"))).message == "ok"


async def test_truncated_body_is_invalid_argument_without_a_traceback(caplog) -> None:
    server = EchoServer(settings())
    async with running(server):
        peer = await Peer.connect(server.port)
        try:
            whole = body("truncated")
            sid = peer.request(whole[:-3])
            await peer.wait_for(lambda: peer.status(sid) is not None)
            assert peer.status(sid) == Status.INVALID_ARGUMENT.value
            assert "Truncated" in (peer.message(sid) or "")
        finally:
            await peer.close()
    assert not [r for r in caplog.records if r.levelname == "ERROR" or r.exc_info]


async def test_unary_request_without_its_message_is_internal_without_a_traceback(caplog) -> None:
    """A client that half-closes a unary call with no message: grpc-java's INTERNAL "Half-closed
    without a request", not the handler's assert and its traceback."""
    server = EchoServer(settings())
    async with running(server):
        peer = await Peer.connect(server.port)
        try:
            sid = peer.request()  # HEADERS with END_STREAM, no DATA
            await peer.wait_for(lambda: peer.status(sid) is not None)
            assert peer.status(sid) == Status.INTERNAL.value
            assert peer.message(sid) == "Half-closed without a request"
            again = peer.request(body("still served"))
            await peer.wait_for(lambda: peer.status(again) is not None)
            assert peer.status(again) == 0
        finally:
            await peer.close()
    assert not [r for r in caplog.records if r.exc_info]
    counted = handled(server, "echo.v1.EchoService")
    assert counted[("Echo", "Internal")] == 1 and counted[("Echo", "OK")] == 1


async def test_ping_flood_gets_too_many_pings() -> None:
    server = EchoServer(settings())
    async with running(server):
        peer = await Peer.connect(server.port)
        try:
            for i in range(10):
                peer.h2.ping(i.to_bytes(8, "big"))
            peer.flush()
            await peer.wait_for(lambda: peer.goaway() is not None)
            goaway = peer.goaway()
            assert goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
            assert goaway.additional_data == b"too_many_pings"
        finally:
            await peer.close()
        assert sample(server, "grpcstack_goaways_sent_total", reason="too_many_pings") == 1


async def test_connection_idle_and_age_and_count_limits() -> None:
    server = EchoServer(
        settings(
            GRPC_MAX_CONNECTION_IDLE_MS=300,
            GRPC_MAX_CONNECTION_AGE_MS=1500,
            GRPC_MAX_CONNECTION_AGE_GRACE_MS=200,
            GRPC_MAX_CONNECTIONS=2,
        )
    )
    async with running(server):
        idle = await Peer.connect(server.port)
        busy = await Peer.connect(server.port)
        third = await Peer.connect(server.port)
        try:
            await third.wait_for(lambda: third.closed)
            assert third.goaway() is not None
            assert third.goaway().error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
            sid = busy.request(body("long", sleep=30))  # keeps `busy` from being idle
            await idle.wait_for(lambda: idle.closed)
            assert idle.goaway() is not None and idle.goaway().error_code == 0
            # age: GOAWAY, then the grace, then the call still running is cut off
            await busy.wait_for(lambda: busy.closed, timeout=10)
            assert busy.goaway() is not None
            assert busy.status(sid) is None
        finally:
            for peer in (idle, busy, third):
                await peer.close()
        assert sample(server, "grpcstack_goaways_sent_total", reason="max_connection_idle") == 1
        assert sample(server, "grpcstack_goaways_sent_total", reason="max_connection_age") == 1
        assert sample(server, "grpcstack_goaways_sent_total", reason="max_connections") == 1
        async with asyncio.timeout(5):
            while sample(server, "grpc_active_connections") != 0:
                await asyncio.sleep(0.01)


async def test_reset_streams_release_their_stream_slots() -> None:
    server = EchoServer(settings(GRPC_MAX_CONCURRENT_STREAMS=2))
    async with running(server):
        peer = await Peer.connect(server.port)
        try:
            for _ in range(10):  # far more than the limit, one after another
                sid = peer.request(body(sleep=30), end=False)
                await asyncio.sleep(0)
                peer.h2.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
                peer.flush()
            last = peer.request(body("served"))
            await peer.wait_for(lambda: peer.status(last) is not None)
            assert peer.status(last) == 0
        finally:
            await peer.close()


async def test_answers_larger_than_the_client_windows_wait_for_its_window_updates() -> None:
    """The server's send blocks on the client's flow-control windows and resumes at each
    WINDOW_UPDATE: a stream's own (stream window 1 KiB) and the connection's (65,535 bytes)."""
    server = EchoServer(settings())
    async with running(server):
        for stream_window, big_connection in ((1024, True), (2**30, False)):
            peer = await Peer.connect(
                server.port, stream_window=stream_window, big_connection=big_connection
            )
            try:
                # the server's SETTINGS and window raise first: the request itself is big too
                await peer.wait_for(lambda p=peer: p.h2.outbound_flow_control_window > 10**6)
                request = body("w" * 200_000)  # the answer carries it back: ~3x 65,535
                sids = []
                for _ in range(2):
                    sid = peer.request(end=False)  # headers only
                    for start in range(0, len(request), 16_384):
                        chunk = request[start : start + 16_384]
                        last = start + 16_384 >= len(request)
                        peer.h2.send_data(sid, chunk, end_stream=last)
                    peer.flush()
                    sids.append(sid)
                await peer.wait_for(
                    lambda p=peer, ids=sids: all(p.status(s) is not None for s in ids)
                )
                for sid in sids:
                    assert peer.status(sid) == 0
                    received = sum(len(e.data) for e in peer.of(h2.events.DataReceived, sid))
                    assert received > 200_000
            finally:
                await peer.close()
