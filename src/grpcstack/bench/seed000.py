"""`grpcstack bench seed000`: seed 000 section 6.2, the standardisation table, reproduced.

The seed's scenario: 1,000 GetStrategyVersion requests from 10 concurrent clients against
MongoDB. Three servers answer the same lookup from the same MongoDB (secantusd, in memory):

* before: the seed's design on grpc.aio (its BaseGrpcServer options, its six interceptors, rate
  limit INCR+EXPIRE on redis-server), the "before" servicer's query;
* after, no cache: grpcstack's StrategyService, full default chain, rate limit on the same Redis;
* after, cache: the same with its @cached L1 (memory) + L2 (the same redis-server).

Key distribution (the seed's 92% hit-rate workload): each round writes K = 8% x requests fresh
versions and requests each of them requests/K times (12.5 on average), shuffled with a fixed
seed. A cold cache misses each key once, so about 92% of calls are hits. The measured hit rate is
1 - loader runs / lookups from the server's own cache metrics. Server pinned to core 0; the load
generator (grpcio asyncio client, its own process) to core 1; redis-server and secantusd unpinned.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .middleware import SWITCHES, _ok_count
from .process import ServerProcess, free_port, mongo_server, pin, probe, read_count, redis_server
from .report import Row, Table, median, percentile

METHOD = "/strategy.v1.StrategyService/GetStrategyVersion"
SERVER = "platform_services.bench_peers:StrategyBenchServer"
HANDLERS = "platform_services.bench_peers:strategy_handlers"
SEEDER = "platform_services.bench_peers:seed_strategies"
USER = "bench-user"
DATABASE = "bench"
BEFORE, NO_CACHE, CACHE = "before (seed on grpcio)", "after, no cache", "after, cache"
SEED = {  # seed 000 section 6.2
    "P50": (45, 42, 8),
    "P95": (120, 110, 15),
    "P99": (180, 165, 25),
    "error rate": (0.2, 0.0, 0.0),
    "throughput": (220, 238, 1250),
    "cache hit rate": (None, None, 92),
    "memory (server RSS)": (120, 125, 145),
}


@dataclass
class Options:
    rounds: int = 3
    requests: int = 1_000
    concurrency: int = 10
    hit_rate: float = 0.92
    profile: bool = False  # py-spy on the cache server during one more all-hits run


def _seed_keys(mongo_url: str, count: int) -> list[bytes]:
    module, _, name = SEEDER.partition(":")
    import importlib

    seeder = getattr(importlib.import_module(module), name)
    strategies = max(1, count // 4)
    keys: list[bytes] = asyncio.run(seeder(mongo_url, DATABASE, USER, strategies, 4))
    return keys[:count]


def _schedule(keys: list[bytes], requests: int, rng: random.Random) -> list[bytes]:
    calls = [keys[i % len(keys)] for i in range(requests)]
    rng.shuffle(calls)
    return calls


def _cache_counts(metrics_port: int) -> dict[str, float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read()
    out = {"lookups": 0.0, "loads": 0.0}
    for line in body.decode().splitlines():
        for key in out:
            if line.startswith(f"grpcstack_cache_{key}_total{{"):
                out[key] += float(line.rsplit(" ", 1)[1])
    return out


def _load(port: int, calls: list[bytes], concurrency: int, tmp: Path) -> dict[str, Any]:
    path = tmp / "requests.hex"
    path.write_text("\n".join(c.hex() for c in calls))
    argv = [*pin(1), sys.executable, "-m", "grpcstack.bench.loadgen", "grpc", "--port", str(port)]
    argv += ["--method", METHOD, "--requests", str(path), "--metadata", f"user-id={USER}"]
    argv += ["--concurrency", str(concurrency)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed: {out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def run(opts: Options) -> tuple[list[Table], dict[str, Any]]:
    tmp = Path(tempfile.mkdtemp(prefix="grpcstack-seed000-"))
    redis, mongo = redis_server(), mongo_server()
    servers: list[ServerProcess] = []
    profiles: dict[str, Any] = {}
    rng = random.Random(0)
    per_round: dict[str, list[dict[str, Any]]] = {BEFORE: [], NO_CACHE: [], CACHE: []}
    sent = dict.fromkeys(per_round, 0)
    metrics = {NO_CACHE: free_port(), CACHE: free_port()}
    all_hits: dict[str, dict[str, float]] = {}
    try:
        redis.start()
        mongo.start()
        redis_url = f"redis://127.0.0.1:{redis.port}"
        mongo_url = f"mongodb://127.0.0.1:{mongo.port}"
        nkeys = max(1, round(opts.requests * (1 - opts.hit_rate)))
        key_sets = [_seed_keys(mongo_url, nkeys) for _ in range(opts.rounds + 1)]
        common = {"MONGO_URL": mongo_url, "MONGO_DATABASE": DATABASE, "REDIS_URL": redis_url}
        after = (
            common
            | {k: "true" for k in SWITCHES}
            | {
                "GRPC_RATE_LIMIT_MAX_REQUESTS": str(10**9),
                "GRPC_CACHE_L1_MAX_SIZE": "200",  # the seed's production value
            }
        )
        peer = [sys.executable, "-m", "grpcstack.bench.grpcio_peer", "--design", "seed"]
        peer += ["--handlers", HANDLERS, "--port", "{port}", "--uvloop"]
        servers = [
            ServerProcess(BEFORE, "", common | {"BENCH_COUNT_FILE": str(tmp / "0")}, argv=peer),
            ServerProcess(
                NO_CACHE,
                SERVER,
                after
                | {
                    "GRPC_CACHE_ENABLED": "false",
                    "GRPC_METRICS_PORT": str(metrics[NO_CACHE]),
                    "BENCH_COUNT_FILE": str(tmp / "1"),
                },
            ),
            ServerProcess(
                CACHE,
                SERVER,
                after
                | {
                    "GRPC_CACHE_ENABLED": "true",
                    "GRPC_METRICS_PORT": str(metrics[CACHE]),
                    "BENCH_COUNT_FILE": str(tmp / "2"),
                },
            ),
        ]
        warm = _schedule(key_sets[0], min(200, opts.requests), rng)
        for s in servers:
            s.start()
            asyncio.run(probe(s.port, METHOD, key_sets[0][0], {"user-id": USER}))
            _load(s.port, warm, opts.concurrency, tmp)
            sent[s.name] = 1 + len(warm)
        for r in range(opts.rounds):
            calls = _schedule(key_sets[r + 1], opts.requests, rng)
            first_seen: set[bytes] = set()
            repeat = [c in first_seen or first_seen.add(c) for c in calls]  # type: ignore[func-returns-value]
            for s in servers:
                counts0 = _cache_counts(metrics[CACHE]) if s.name == CACHE else None
                cpu0, wait0 = s.cpu_seconds(), s.runqueue_seconds()
                result = _load(s.port, calls, opts.concurrency, tmp)
                cpu_ms = 1000 * (s.cpu_seconds() - cpu0) / len(calls)
                sent[s.name] += len(calls)
                lat = result["latencies_ms"]
                ok = result["statuses"].get("OK", 0)
                row: dict[str, Any] = {
                    "p50": percentile(lat, 50),
                    "p95": percentile(lat, 95),
                    "p99": percentile(lat, 99),
                    "error_rate": 100 * (len(calls) - ok) / len(calls),
                    "rps": len(calls) / result["wall_s"],
                    "cpu_ms": cpu_ms,
                    "busy": 100 * (s.cpu_seconds() - cpu0) / result["wall_s"],
                    "runqueue": 100 * (s.runqueue_seconds() - wait0) / result["wall_s"],
                    "client_cpu_ms": 1000 * result["cpu_s"] / len(calls),
                    "client_busy": 100 * result["cpu_s"] / result["wall_s"],
                    "statuses": result["statuses"],
                    **{f"rss_{k}": v for k, v in s.rss_mb().items()},
                }
                if counts0 is not None:
                    counts1 = _cache_counts(metrics[CACHE])
                    lookups = counts1["lookups"] - counts0["lookups"]
                    loads = counts1["loads"] - counts0["loads"]
                    row["hit_rate"] = 100 * (1 - loads / lookups) if lookups else 0.0
                    hits = [x for x, rep in zip(lat, repeat, strict=True) if rep]
                    row["hit_p99"] = percentile(hits, 99) if hits else None
                per_round[s.name].append(row)
        # the cache's own bound: the last round's keys again, all L1 hits now, and the same
        # calls to the before server (it has no cache: its cost is the round's)
        repeat_calls = _schedule(key_sets[opts.rounds], 3 * opts.requests, rng)
        for s in (servers[0], servers[-1]):
            cpu0 = s.cpu_seconds()
            result = _load(s.port, repeat_calls, opts.concurrency, tmp)
            sent[s.name] += len(repeat_calls)
            all_hits[s.name] = {
                "rps": len(repeat_calls) / result["wall_s"],
                "cpu_ms": 1000 * (s.cpu_seconds() - cpu0) / len(repeat_calls),
                "ok": result["statuses"].get("OK", 0),
            }
            if all_hits[s.name]["ok"] != len(repeat_calls):
                raise RuntimeError(f"{s.name}: {result['statuses']} in the all-hit run")
        if opts.profile:
            hits = _schedule(key_sets[-1], 10 * opts.requests, rng)  # all cached by now
            profiles = _profile(servers[-1], hits, opts.concurrency, tmp)
            sent[CACHE] += len(hits)
        ok_after = {n: _ok_count(metrics[n], METHOD) for n in (NO_CACHE, CACHE)}
    finally:
        for s in servers:
            s.stop()
        mongo.stop()
        redis.stop()
    answered = read_count(tmp / "0")  # the grpcio peer's handler count
    if answered != sent[BEFORE]:
        raise RuntimeError(f"{BEFORE}: handler answered {answered} of {sent[BEFORE]} calls")
    for name, n in ok_after.items():
        if n != sent[name]:
            raise RuntimeError(f"{name}: Prometheus counted {n} OK of {sent[name]} calls")
    table = _table(opts, per_round, nkeys, all_hits)
    table.notes += _profile_notes(profiles)
    return [table], {
        "rounds": per_round,
        "verified_ok_calls": sent,
        "all_hits": all_hits,
        "profiles": profiles,
    }


def _profile(s: ServerProcess, calls: list[bytes], concurrency: int, tmp: Path) -> dict[str, Any]:
    """py-spy self time of the cache server while the load sends only L1 hits."""
    import threading

    from . import profile

    assert s.proc is not None
    result: dict[str, Any] = {}
    sampler = threading.Thread(target=lambda: result.update(profile.record(s.proc.pid, 8)))  # type: ignore[union-attr]
    sampler.start()
    _load(s.port, calls, concurrency, tmp)
    sampler.join(120)
    print(profile.text(result, f"{s.name}, L1 hits"), file=sys.stderr)
    return {s.name: result}


def _profile_notes(profiles: dict[str, Any]) -> list[str]:
    """The profile in the report: where a cache hit's CPU goes."""
    notes = []
    for name, p in profiles.items():
        if not p.get("samples"):
            continue
        packages = ", ".join(f"{k} {v}%" for k, v in list(p["packages"].items())[:8])
        # the process's whole run (cli.py) is not a part of where a call's time goes
        inclusive = [(k, v) for k, v in p.get("inclusive", {}).items() if "cli.py" not in k]
        parts = ", ".join(f"{k.split(' (')[0]} {v}%" for k, v in inclusive[:16])
        notes.append(
            f"py-spy on {name}, an all-L1-hit run ({p['samples']} samples; `asyncio` is mostly "
            f"uvloop's C loop, and runnable-but-waiting time shows there too): by package "
            f"{packages}. Inclusive: {parts}."
        )
    return notes


def _table(
    opts: Options,
    per_round: dict[str, list[dict[str, Any]]],
    nkeys: int,
    all_hits: dict[str, dict[str, float]],
) -> Table:
    cols = [BEFORE, NO_CACHE, CACHE]
    t = Table(
        f"Seed 000 section 6.2: GetStrategyVersion, {opts.requests} requests, "
        f"{opts.concurrency} concurrent clients, MongoDB",
        cols,
    )

    def med(col: str, key: str) -> float | None:
        values = [r[key] for r in per_round[col] if r.get(key) is not None]
        return median(values) if values else None

    def seed(metric: str) -> dict[str, float | None]:
        return dict(zip(cols, SEED[metric], strict=True))

    for label, key in (("P50", "p50"), ("P95", "p95"), ("P99", "p99")):
        t.add(Row(f"{label} latency", "ms", {c: med(c, key) for c in cols}, seed(label)))
    t.add(Row("error rate", "%", {c: med(c, "error_rate") for c in cols}, seed("error rate")))
    t.add(
        Row(
            "throughput",
            "req/s",
            {c: med(c, "rps") for c in cols},
            seed("throughput"),
            lower_is_better=False,
        )
    )
    t.add(
        Row(
            "cache hit rate",
            "%",
            {BEFORE: None, NO_CACHE: None, CACHE: med(CACHE, "hit_rate")},
            seed("cache hit rate"),
            lower_is_better=False,
        )
    )
    t.add(Row("cache-hit P99 (repeat keys)", "ms", {CACHE: med(CACHE, "hit_p99")}))
    t.add(Row("server CPU per call", "CPU ms", {c: med(c, "cpu_ms") for c in cols}))
    t.add(Row("server busy (CPU / wall)", "%", {c: med(c, "busy") for c in cols}))
    t.add(
        Row(
            "server runnable, waiting for a core (run queue / wall)",
            "%",
            {c: med(c, "runqueue") for c in cols},
        )
    )
    t.add(Row("load generator CPU per call", "CPU ms", {c: med(c, "client_cpu_ms") for c in cols}))
    t.add(Row("load generator busy (CPU / wall)", "%", {c: med(c, "client_busy") for c in cols}))
    t.add(
        Row(
            "memory (server RSS)",
            "MB",
            {c: med(c, "rss_rss") for c in cols},
            seed("memory (server RSS)"),
        )
    )
    if all_hits:
        for label, key, unit, lower in (
            ("all-hit run: throughput", "rps", "req/s", False),
            ("all-hit run: server CPU per call", "cpu_ms", "CPU ms", True),
        ):
            values = {c: all_hits[c][key] for c in (BEFORE, CACHE) if c in all_hits}
            t.add(Row(label, unit, values, lower_is_better=lower))
    speedup = (med(CACHE, "rps") or 0) / (med(BEFORE, "rps") or 1)
    t.target("after-with-cache / before throughput", speedup, ">= 5", speedup >= 5)
    # the same goal per server CPU-second: what a server does with the core it gets (on a shared
    # machine, throughput at 10 in flight also depends on how soon each process is scheduled)
    per_cpu = (med(BEFORE, "cpu_ms") or 0) / (med(CACHE, "cpu_ms") or 1)
    t.target("after-with-cache / before calls per server CPU-second", per_cpu, ">= 5", per_cpu >= 5)
    t.notes += [
        f"{opts.rounds} interleaved rounds, medians. Keys: each round {nkeys} fresh versions "
        f"(cold cache), each requested {opts.requests / nkeys:.1f} times on average, shuffled "
        f"(seed 0): at most {100 * (1 - nkeys / opts.requests):.0f}% can hit.",
        "Hit rate measured by the server: 1 - loader runs / cache lookups (single-flight: "
        "concurrent misses on one key load once). Cache-hit P99: calls whose key was "
        "requested before in the round.",
        f"All-hit run: after the rounds, the last round's keys once more ({3 * opts.requests} "
        "calls, every one an L1 hit on the cache server; the before server has no cache), the "
        "cache's own bound next to the 92% workload's.",
        "Server on core 0, load (grpcio asyncio client, separate process) on core 1; "
        "MongoDB (secantusd, in memory) and redis-server unpinned. All servers on uvloop.",
        "The seed's numbers were measured on its own machines and MongoDB; compare ratios.",
    ]
    return t
