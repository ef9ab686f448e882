"""Stalled request bodies: bounded per connection, timed out, and released on close."""

from __future__ import annotations

import asyncio
import gc
import struct

import h2.events
import h2.exceptions
from conftest import running, settings

from hostile.h2peer import Peer
from platform_services.echo import EchoServer

MIB = 1024 * 1024
ANNOUNCED = 10 * MIB


def rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def stall(peer: Peer, streams: int) -> list[int]:
    """Open ``streams`` calls, each announcing a 10 MiB message and sending all of it that flow
    control allows except the last 10 bytes; return once nothing more can be sent."""
    sids = []
    remaining: dict[int, int] = {}
    for _ in range(streams):
        sid = peer.h2.get_next_available_stream_id()
        peer.h2.send_headers(sid, _headers())
        peer.h2.send_data(sid, struct.pack(">?I", False, ANNOUNCED))
        sids.append(sid)
        remaining[sid] = ANNOUNCED - 10
    peer.flush()
    chunk = bytes(16384)
    while True:
        sent = False
        for sid, left in remaining.items():
            while left:
                try:
                    n = min(left, len(chunk), peer.h2.local_flow_control_window(sid))
                    if n <= 0:
                        break
                    peer.h2.send_data(sid, chunk[:n])
                except h2.exceptions.StreamClosedError:  # the server gave up on it already
                    left = 0
                    break
                left -= n
                sent = True
            remaining[sid] = left
        peer.flush()
        await peer.writer.drain()
        if not any(remaining.values()):
            break
        if not sent:
            updates = len(peer.of(h2.events.WindowUpdated))
            try:
                await peer.wait_for(
                    lambda u=updates: len(peer.of(h2.events.WindowUpdated)) > u, timeout=0.5
                )
            except TimeoutError:
                break  # the server stopped granting window: that is the point
    return sids


def _headers() -> list[tuple[str, str]]:
    from hostile.h2peer import grpc_headers

    return grpc_headers()


async def test_stalled_bodies_are_bounded_and_time_out() -> None:
    server = EchoServer(
        settings(
            GRPC_MESSAGE_BODY_TIMEOUT_SECONDS=1.0,
            GRPC_MAX_CONNECTION_PENDING_BYTES=16 * MIB,
            GRPC_MAX_MESSAGE_LENGTH=12 * MIB,
        )
    )
    async with running(server):
        peer = await Peer.connect(server.port)
        try:
            sids = await stall(peer, 10)
            (protocol,) = list(server.grpc_server.protocols)
            assert protocol.pending_bytes <= 16 * MIB
            await peer.wait_for(lambda: all(peer.status(s) is not None for s in sids), timeout=20)
            assert {peer.status(s) for s in sids} == {1}  # CANCELLED
            assert "did not arrive within 1 s" in (peer.message(sids[0]) or "")
            assert protocol.pending_bytes == 0
            assert peer.goaway() is None
        finally:
            await peer.close()


async def test_memory_of_stalled_bodies_returns_after_close() -> None:
    server = EchoServer(settings(GRPC_MAX_MESSAGE_LENGTH=12 * MIB))
    async with running(server):
        warm = await Peer.connect(server.port)
        await stall(warm, 10)
        await warm.close()
        gc.collect()
        baseline = rss()
        for _ in range(4):
            peer = await Peer.connect(server.port)
            await stall(peer, 10)
            await peer.close()
            async with asyncio.timeout(10):
                while server.grpc_server.protocols:
                    await asyncio.sleep(0.01)
        async with asyncio.timeout(10):
            while server.grpc_server.inflight:
                await asyncio.sleep(0.01)
        gc.collect()
        grown = rss() - baseline
        print(f"RSS after 4 rounds of 10 stalled 10 MiB bodies: {grown / MIB:+.1f} MiB")
        assert grown < 40 * MIB
