"""`grpcstack bench stacks`: server against server on a trivial unary echo.

Four servers, each its own process pinned to core 0, all answering /echo.v1.EchoService/Echo:
grpcstack with the full default chain, grpcstack with every middleware off, grpc.aio with no
interceptor, and seed 000's design on grpc.aio (its six interceptors, its rate limiter on a real
redis-server), all on uvloop. h2load, pinned to core 1, drives them in interleaved rounds:
throughput at 100 in flight (one connection) and sequential latency (one call at a time, p50
from h2load's per-request log). Every h2load run must report all requests succeeded (HTTP 200),
and at the end every server's handler count must equal the requests sent to it (each server
writes it on stop); the full chain's Prometheus OK count is checked too. Medians are reported,
with per-round ratios against grpc.aio bare.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .middleware import SWITCHES, _ok_count
from .process import H2Load, ServerProcess, free_port, probe, read_count, redis_server
from .report import Row, Table, median, percentile

METHOD = "/echo.v1.EchoService/Echo"
REQUEST = bytes.fromhex("0a0568656c6c6f")  # EchoRequest(message="hello")
ECHO_SERVER = "platform_services.bench_peers:CountingEchoServer"
ECHO_HANDLERS = "platform_services.bench_peers:echo_handlers"
FULL, BARE, AIO, SEED = "grpcstack full", "grpcstack bare", "grpc.aio bare", "seed on grpcio"


@dataclass
class Options:
    rounds: int = 3
    requests: int = 20_000  # per throughput run
    sequential: int = 1_000  # per sequential run
    streams: int = 100
    redis_ratelimit: bool = False  # grpcstack's rate limiter on Redis too (the seed's always is)
    profile: bool = False  # py-spy on the grpcstack servers during one more loaded run each


def _servers(tmp: Path, redis_url: str, metrics_port: int, opts: Options) -> list[ServerProcess]:
    counts = {name: str(tmp / f"{i}.count") for i, name in enumerate((FULL, BARE, AIO, SEED))}
    full_env = {k: "true" for k in SWITCHES} | {
        "GRPC_RATE_LIMIT_MAX_REQUESTS": str(10**9),
        "GRPC_METRICS_PORT": str(metrics_port),
        "GRPC_CACHE_ENABLED": "false",
    }
    if opts.redis_ratelimit:
        full_env["REDIS_URL"] = redis_url
    peer = [sys.executable, "-m", "grpcstack.bench.grpcio_peer", "--handlers", ECHO_HANDLERS]
    peer += ["--port", "{port}", "--uvloop"]
    return [
        ServerProcess(FULL, ECHO_SERVER, full_env | {"BENCH_COUNT_FILE": counts[FULL]}),
        ServerProcess(
            BARE,
            ECHO_SERVER,
            {k: "false" for k in SWITCHES}
            | {"GRPC_CACHE_ENABLED": "false", "BENCH_COUNT_FILE": counts[BARE]},
        ),
        ServerProcess(AIO, "", {"BENCH_COUNT_FILE": counts[AIO]}, argv=[*peer, "--design", "bare"]),
        ServerProcess(
            SEED,
            "",
            {
                "BENCH_COUNT_FILE": counts[SEED],
                "REDIS_URL": redis_url,
                "BENCH_SEED_MAX_STREAMS": "1000",
            },
            argv=[*peer, "--design", "seed"],
        ),
    ]


def run(opts: Options) -> tuple[Table, dict[str, Any]]:
    tmp = Path(tempfile.mkdtemp(prefix="grpcstack-stacks-"))
    metrics_port = free_port()
    redis = redis_server()
    headers = {"user-id": "bench"}
    loaded = H2Load(METHOD, REQUEST, headers, 1, opts.streams)
    one = H2Load(METHOD, REQUEST, headers, 1, 1)
    servers: list[ServerProcess] = []
    profiles: dict[str, Any] = {}
    sent: dict[str, int] = {}
    rps: dict[str, list[float]] = {}
    p50: dict[str, list[float]] = {}
    p99: dict[str, list[float]] = {}
    ratios: dict[str, list[float]] = {}
    cpu_us: dict[
        str, list[float]
    ] = {}  # server CPU per call: robust when other work shares the core
    try:
        redis.start()
        servers = _servers(tmp, f"redis://127.0.0.1:{redis.port}", metrics_port, opts)
        for s in servers:
            s.start()
            asyncio.run(probe(s.port, METHOD, REQUEST, headers))
            loaded.run(s.port, 1000)  # warm up
            sent[s.name] = 1001
        for _ in range(opts.rounds):
            round_rps: dict[str, float] = {}
            for s in servers:
                cpu0 = s.cpu_seconds()
                r = loaded.run(s.port, opts.requests)
                cpu_us.setdefault(s.name, []).append(1e6 * (s.cpu_seconds() - cpu0) / opts.requests)
                _check(s.name, r, opts.requests)
                round_rps[s.name] = r["rps"]
                rps.setdefault(s.name, []).append(r["rps"])
                lat: list[float] = []
                r = one.run(s.port, opts.sequential, latencies=lat)
                _check(s.name, r, opts.sequential)
                p50.setdefault(s.name, []).append(percentile(lat, 50))
                p99.setdefault(s.name, []).append(percentile(lat, 99))
                sent[s.name] += opts.requests + opts.sequential
            for name, value in round_rps.items():
                ratios.setdefault(name, []).append(value / round_rps[AIO])
        if opts.profile:
            profiles = _profile(servers, loaded, opts.requests)
            for name in profiles:
                sent[name] += opts.requests
        full_ok = _ok_count(metrics_port, METHOD)
    finally:
        for s in servers:
            s.stop()
        redis.stop()
        loaded.close()
        one.close()
    counted = {s.name: read_count(tmp / f"{i}.count") for i, s in enumerate(servers)}
    for name, n in counted.items():
        if n != sent[name]:
            raise RuntimeError(f"{name}: handler answered {n} calls of {sent[name]} sent")
    if full_ok != sent[FULL]:
        raise RuntimeError(f"{FULL}: Prometheus counted {full_ok} OK of {sent[FULL]} sent")
    return _table(opts, rps, p50, p99, ratios, cpu_us, sent), {
        "rounds": {
            "rps": rps,
            "p50_ms": p50,
            "p99_ms": p99,
            "ratio_vs_aio": ratios,
            "cpu_us_per_call": cpu_us,
        },
        "verified_ok_calls": sent,
        "profiles": profiles,
    }


def _profile(servers: list[ServerProcess], load: H2Load, requests: int) -> dict[str, Any]:
    """py-spy self time of each grpcstack server while h2load keeps 100 calls in flight."""
    import threading

    from . import profile

    out: dict[str, Any] = {}
    for s in servers:
        if s.name not in (FULL, BARE) or s.proc is None:
            continue
        result: dict[str, Any] = {}
        pid = s.proc.pid

        def sample(pid: int = pid, result: dict[str, Any] = result) -> None:
            result.update(profile.record(pid, 5))

        sampler = threading.Thread(target=sample)
        sampler.start()
        _check(s.name, load.run(s.port, requests), requests)
        sampler.join(120)
        out[s.name] = result
        print(profile.text(result, s.name), file=sys.stderr)
    return out


def _check(name: str, result: dict[str, float], requests: int) -> None:
    if result["succeeded"] != requests:
        raise RuntimeError(f"{name}: only {result['succeeded']:.0f} of {requests} succeeded")


def _table(
    opts: Options,
    rps: dict[str, list[float]],
    p50: dict[str, list[float]],
    p99: dict[str, list[float]],
    ratios: dict[str, list[float]],
    cpu_us: dict[str, list[float]],
    sent: dict[str, int],
) -> Table:
    cols = [FULL, BARE, AIO, SEED]
    t = Table("Servers side by side: trivial unary echo, server on core 0, h2load on core 1", cols)
    t.add(
        Row(
            f"throughput, {opts.streams} in flight",
            "req/s",
            {c: median(rps[c]) for c in cols},
            lower_is_better=False,
        )
    )
    t.add(Row("sequential p50", "ms", {c: median(p50[c]) for c in cols}))
    t.add(Row("sequential p99", "ms", {c: median(p99[c]) for c in cols}))
    t.add(
        Row(
            "throughput / grpc.aio bare (median of rounds)",
            "x",
            {c: median(ratios[c]) for c in cols},
            lower_is_better=False,
        )
    )
    t.add(
        Row(
            f"server CPU per call, {opts.streams} in flight",
            "us",
            {c: median(cpu_us[c]) for c in cols},
        )
    )
    busy = {c: median([r * u / 1e4 for r, u in zip(rps[c], cpu_us[c], strict=True)]) for c in cols}
    t.add(Row("server core busy during the loaded runs", "%", busy, lower_is_better=False))
    t.add(
        Row(
            "calls per CPU-second (1e6 / CPU per call)",
            "calls/s",
            {c: 1e6 / median(cpu_us[c]) for c in cols},
            lower_is_better=False,
        )
    )
    t.add(Row("OK calls verified", "calls", {c: float(sent[c]) for c in cols}))
    full_vs_aio = median(ratios[FULL])
    full_vs_seed = median([a / b for a, b in zip(rps[FULL], rps[SEED], strict=True)])
    p50_ratio = median([a / b for a, b in zip(p50[FULL], p50[AIO], strict=True)])
    t.target("full chain / grpc.aio bare throughput", full_vs_aio, ">= 1.5", full_vs_aio >= 1.5)
    t.target("full chain / seed design throughput", full_vs_seed, ">= 2", full_vs_seed >= 2)
    t.target("full chain / grpc.aio bare sequential p50", p50_ratio, "<= 1.1", p50_ratio <= 1.1)
    cpu_vs_aio = median(cpu_us[AIO]) / median(cpu_us[FULL])
    cpu_vs_seed = median(cpu_us[SEED]) / median(cpu_us[FULL])
    t.target(
        "full chain calls per CPU-second / grpc.aio bare", cpu_vs_aio, ">= 1.5", cpu_vs_aio >= 1.5
    )
    t.target("full chain calls per CPU-second / seed design", cpu_vs_seed, ">= 2", cpu_vs_seed >= 2)
    t.notes += [
        f"{opts.rounds} interleaved rounds of {opts.requests} requests at {opts.streams} in flight "
        f"(one connection) and {opts.sequential} sequential; medians. All servers on uvloop.",
        "The seed publishes no server-vs-server numbers, so this table has no seed column values.",
        "grpcstack full: the default six middlewares, rate limit "
        + ("on Redis" if opts.redis_ratelimit else "in process (no REDIS_URL)")
        + "; seed on grpcio: its six interceptors, rate limit INCR+EXPIRE on redis-server.",
        "Server CPU per call = the server process's user+sys time over the run / calls; it "
        "holds when other processes share the core, throughput does not. 'Core busy' = req/s x "
        "CPU per call: below 100% the server was waiting or, on a shared core, not scheduled.",
        "OK calls: every h2load run reported all requests 200, and each server's handler count "
        "(and the full chain's grpc_server_handled_total OK) equals the requests sent.",
    ]
    return t
