"""`grpcstack bench client`: grpcstack.Client vs grpcio's asyncio client vs a plain grpclib Channel.

One server process (pinned to core 0; middleware off unless --full-chain) answers all three
clients, which run in this process (pinned to core 1) on one asyncio loop, in interleaved rounds:
per round and client, a sequential run (per-call latency: p50, p99) and throughput runs with 1, 10
and 100 calls in flight on one connection. Every client sends the same pre-encoded request bytes
and receives raw bytes (no message codec on either side), so the numbers are the clients' own
cost. Every reply is checked against the first reply; the report prints per-round numbers, medians
and the grpcstack/grpcio ratios (target: sequential p50 <= 1.0x, 100-in-flight req/s >= 1.0x).
Each run also records the client's CPU per call (this process, grpcio's threads included), the
server process's CPU per call and the share of the run the server sat idle (neither working nor
waiting for a core): at 100 in flight the server is the limit, so req/s follows the server's CPU
per call and how much of the time the client leaves it without work; both hold up better than
req/s when other jobs share the machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from grpclib.client import Channel
from grpclib.const import Cardinality

from .process import ServerProcess, _RawCodec, probe

SWITCHES = (
    "GRPC_ENABLE_METRICS",
    "GRPC_ENABLE_AUTH",
    "GRPC_ENABLE_RATE_LIMITING",
    "GRPC_ENABLE_CORRELATION_ID",
    "GRPC_ENABLE_LOGGING",
    "GRPC_ENABLE_ERROR_HANDLING",
)
CLIENTS = ("grpcstack", "grpcio", "grpclib")
IN_FLIGHT = (1, 10, 100)

Call = Callable[[], Awaitable[bytes]]


@dataclass
class Options:
    target: str
    method: str
    message: bytes
    rounds: int = 3
    sequential: int = 2000
    requests: int = 5000  # per throughput run
    full_chain: bool = False
    server_cpu: int | None = 0
    client_cpu: int | None = 1
    profile: bool = False
    uvloop: bool = False  # run the clients' loop on uvloop (all three)


async def _grpcstack(port: int, opts: Options) -> tuple[Call, Callable[[], Any]]:
    from ..client import Client
    from ..settings import ClientSettings

    client = Client(
        f"127.0.0.1:{port}",
        settings=ClientSettings(_env_file=None),  # type: ignore[call-arg]
        codec=_RawCodec(),
    )
    method, message = opts.method, opts.message

    def call() -> Awaitable[bytes]:
        return client.unary_unary(method, message, bytes)  # type: ignore[no-any-return]

    return call, client.close


async def _grpcio(port: int, opts: Options) -> tuple[Call, Callable[[], Any]]:
    import grpc

    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    await channel.channel_ready()
    stub = channel.unary_unary(opts.method)
    message = opts.message

    def call() -> Awaitable[bytes]:
        return stub(message)  # type: ignore[no-any-return]

    async def close() -> None:
        await channel.close()

    return call, close


async def _grpclib(port: int, opts: Options) -> tuple[Call, Callable[[], Any]]:
    channel = Channel("127.0.0.1", port, codec=_RawCodec())
    method, message = opts.method, opts.message

    async def call() -> bytes:
        async with channel.request(method, Cardinality.UNARY_UNARY, bytes, bytes) as stream:
            await stream.send_message(message, end=True)
            reply = await stream.recv_message()
        return reply or b""

    return call, channel.close


FACTORIES = {"grpcstack": _grpcstack, "grpcio": _grpcio, "grpclib": _grpclib}


async def _sequential(call: Call, n: int, expected: bytes) -> dict[str, float]:
    times = []
    perf = time.perf_counter
    cpu_start = time.process_time()  # this process: the client's CPU (grpcio's threads too)
    for _ in range(n):
        t0 = perf()
        reply = await call()
        times.append(perf() - t0)
        if reply != expected:
            raise RuntimeError(f"unexpected reply {reply!r}")
    cpu = time.process_time() - cpu_start
    times.sort()
    return {
        "cpu_us": cpu / n * 1e6,
        "p50_us": times[len(times) // 2] * 1e6,
        "p99_us": times[int(len(times) * 0.99)] * 1e6,
    }


async def _throughput(
    call: Call, in_flight: int, total: int, expected: bytes, server: ServerProcess | None = None
) -> dict[str, float]:
    """req/s (``rps``), this process's CPU per call in us (``cpu_us``: the client's, grpcio's
    threads too) and, with ``server``, the server process's CPU per call in us (``server_us``)
    and the share of the run it sat idle, neither working nor waiting for a core
    (``server_idle``: what the client left it without work)."""
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            if await call() != expected:
                raise RuntimeError("unexpected reply")

    server_start = server.cpu_seconds() if server is not None else 0.0
    queued_start = server.runqueue_seconds() if server is not None else 0.0
    started = time.perf_counter()
    cpu_start = time.process_time()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    cpu = time.process_time() - cpu_start
    wall = time.perf_counter() - started
    result = {"rps": total / wall, "cpu_us": cpu / total * 1e6}
    if server is not None:
        server_cpu = server.cpu_seconds() - server_start
        queued = server.runqueue_seconds() - queued_start
        result["server_us"] = server_cpu / total * 1e6
        result["server_idle"] = max(0.0, wall - server_cpu - queued) / wall
    return result


async def _run(server: ServerProcess, opts: Options) -> dict[str, Any]:
    port = server.port
    clients: dict[str, tuple[Call, Callable[[], Any]]] = {}
    for name in CLIENTS:
        clients[name] = await FACTORIES[name](port, opts)
    try:
        expected = await clients["grpclib"][0]()
        for name in CLIENTS:  # warm up every client (connections, caches)
            await _sequential(clients[name][0], min(300, opts.sequential), expected)
            await _throughput(clients[name][0], 100, min(1000, opts.requests), expected)
        rounds: list[dict[str, Any]] = []
        for _ in range(opts.rounds):
            row: dict[str, Any] = {}
            for name in CLIENTS:
                call = clients[name][0]
                result: dict[str, float] = await _sequential(call, opts.sequential, expected)
                for n in IN_FLIGHT:
                    run = await _throughput(call, n, opts.requests, expected, server)
                    result.update({f"{k}_{n}": v for k, v in run.items()})
                row[name] = result
            rounds.append(row)
        profile = _profile(clients["grpcstack"][0], opts, expected) if opts.profile else None
        if profile is not None:
            profile = await profile
    finally:
        for _, close in clients.values():
            outcome = close()
            if asyncio.iscoroutine(outcome):
                await outcome
    summary = _summary(rounds)
    return {
        "benchmark": "client",
        "method": opts.method,
        "request_bytes": len(opts.message),
        "server_chain": "full" if opts.full_chain else "bare",
        "client_loop": "uvloop" if opts.uvloop else "asyncio",
        "sequential_calls": opts.sequential,
        "requests_per_throughput_run": opts.requests,
        "rounds": rounds,
        **summary,
        **({"profile": profile} if profile else {}),
    }


async def _profile(call: Call, opts: Options, expected: bytes) -> str:
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    await _sequential(call, opts.sequential, expected)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
    return out.getvalue()


def _summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    medians: dict[str, dict[str, float]] = {}
    for name in CLIENTS:
        keys = rounds[0][name].keys()
        medians[name] = {k: statistics.median(r[name][k] for r in rounds) for k in keys}
    ratio_p50 = [r["grpcstack"]["p50_us"] / r["grpcio"]["p50_us"] for r in rounds]
    ratio_100 = [r["grpcstack"]["rps_100"] / r["grpcio"]["rps_100"] for r in rounds]
    ratio_cpu = [r["grpcstack"]["cpu_us"] / r["grpcio"]["cpu_us"] for r in rounds]
    ratio_cpu_100 = [r["grpcstack"]["cpu_us_100"] / r["grpcio"]["cpu_us_100"] for r in rounds]
    return {
        "medians": medians,
        "ratio_p50_vs_grpcio": statistics.median(ratio_p50),
        "ratio_rps100_vs_grpcio": statistics.median(ratio_100),
        "ratio_cpu_vs_grpcio": statistics.median(ratio_cpu),
        "ratio_cpu100_vs_grpcio": statistics.median(ratio_cpu_100),
        "ratio_p50_vs_grpclib": statistics.median(
            r["grpcstack"]["p50_us"] / r["grpclib"]["p50_us"] for r in rounds
        ),
    }


def run(opts: Options) -> dict[str, Any]:
    env = {"GRPC_UVLOOP": "true"}
    if opts.full_chain:
        env.update({k: "true" for k in SWITCHES})
        env.update({"GRPC_RATE_LIMIT_MAX_REQUESTS": str(10**9), "GRPC_ENABLE_AUTH": "false"})
    else:
        env.update({k: "false" for k in SWITCHES})
    server = ServerProcess("server", opts.target, env, cpu=opts.server_cpu)
    affinity = None
    if opts.client_cpu is not None and (os.cpu_count() or 1) > opts.client_cpu:
        affinity = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {opts.client_cpu})
    try:
        server.start()
        asyncio.run(probe(server.port, opts.method, opts.message, {}))
        if opts.uvloop:
            import uvloop

            return uvloop.run(_run(server, opts))  # type: ignore[no-any-return]
        return asyncio.run(_run(server, opts))
    finally:
        server.stop()
        if affinity is not None:
            os.sched_setaffinity(0, affinity)


def report(result: dict[str, Any]) -> str:
    lines = [
        f"client comparison: {result['method']}, {result['request_bytes']} B request, "
        f"{result['server_chain']} server chain, client loop {result['client_loop']}, "
        f"{result['sequential_calls']} sequential calls "
        f"and {result['requests_per_throughput_run']} calls per throughput run",
        f"{'round':>6} {'client':>10} {'cpu us':>7} {'p50 us':>8} {'p99 us':>8} "
        + " ".join(f"{'rps@' + str(n):>8}" for n in IN_FLIGHT)
        + f" {'cpu@100':>8} {'srv@100':>8} {'idle@100':>8}",
    ]

    def row(label: str, name: str, r: dict[str, float]) -> str:
        return (
            f"{label:>6} {name:>10} {r['cpu_us']:>7.0f} {r['p50_us']:>8.0f} {r['p99_us']:>8.0f} "
            + " ".join(f"{r[f'rps_{n}']:>8.0f}" for n in IN_FLIGHT)
            + f" {r['cpu_us_100']:>8.0f} {r['server_us_100']:>8.0f}"
            + f" {r['server_idle_100']:>8.1%}"
        )

    for i, rnd in enumerate(result["rounds"], 1):
        for name in CLIENTS:
            lines.append(row(str(i), name, rnd[name]))
    for name in CLIENTS:
        lines.append(row("median", name, result["medians"][name]))
    lines.append(
        f"grpcstack/grpcio: sequential p50 {result['ratio_p50_vs_grpcio']:.3f}x (target <= 1.0), "
        f"req/s at 100 in flight {result['ratio_rps100_vs_grpcio']:.3f}x (target >= 1.0); "
        f"client CPU per call: sequential {result['ratio_cpu_vs_grpcio']:.3f}x, "
        f"at 100 in flight {result['ratio_cpu100_vs_grpcio']:.3f}x; "
        f"grpcstack/grpclib p50 {result['ratio_p50_vs_grpclib']:.3f}x; server idle at 100 in "
        f"flight: grpcstack {result['medians']['grpcstack']['server_idle_100']:.1%}, "
        f"grpcio {result['medians']['grpcio']['server_idle_100']:.1%}"
    )
    if "profile" in result:
        lines.append(result["profile"])
    summary = {k: v for k, v in result.items() if k != "profile"}
    return "\n".join(lines) + "\n" + json.dumps(summary)
