"""`grpcstack bench workers`: throughput of ``--workers N`` against one process, same run.

Two servers of the same target run side by side: one plain process, one supervisor with N workers
on one SO_REUSEPORT port (neither pinned: the workers need every core). h2load drives them in
alternating rounds over many connections (the kernel spreads connections, not calls, over the
workers, so a handful of connections would leave one worker idle). Each round's ratio is
N-worker req/s over 1-worker req/s; the report gives the median. The N-worker server's merged
``/metrics`` must count exactly the calls sent to it as OK, so the run also checks the
aggregating exporter, and measures accepted calls, not errors.

The load generator shares the machine: on 2 cores h2load takes a slice of the CPU the two
workers would use. On a machine busy with other work the ratio also stops measuring parallelism
alone: two processes win a larger share of contended cores than one (ratios above N show it). So
each round also records the CPU seconds each server's processes used (Linux /proc) and the calls
per CPU second: ``cpu_ratio`` says how much more CPU the N workers got, ``efficiency`` whether a
call costs the same in a worker as in the single process.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

from .middleware import _ok_count
from .process import H2Load, ServerProcess, free_port, probe


@dataclass
class Options:
    target: str
    method: str
    message: bytes
    workers: int = 2
    rounds: int = 5
    requests: int = 20_000
    connections: int = 16
    streams: int = 20
    uvloop: bool = True


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_seconds(pid: int) -> float:
    """user + system CPU of ``pid`` and its live children (the workers), from /proc."""
    total = 0.0
    pids = [pid]
    children = f"/proc/{pid}/task/{pid}/children"
    try:
        with open(children) as f:
            pids += [int(p) for p in f.read().split()]
    except OSError:
        pass
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime
    return total


def _workers_scraped(metrics_port: int) -> int:
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    body = urllib.request.urlopen(url, timeout=5).read().decode()
    for line in body.splitlines():
        if line.startswith("grpcstack_workers_scraped "):
            return int(float(line.split()[1]))
    return 0


def _wait_for_workers(metrics_port: int, workers: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if _workers_scraped(metrics_port) == workers:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{workers} workers did not all start")


def run(opts: Options) -> dict[str, Any]:
    common = {
        "GRPC_UVLOOP": str(opts.uvloop).lower(),
        "GRPC_RATE_LIMIT_MAX_REQUESTS": str(10**9),
        "GRPC_ENABLE_AUTH": "true",
    }
    metrics_port = free_port()
    one = ServerProcess("1 worker", opts.target, {**common, "GRPC_WORKERS": "1"}, cpu=None)
    many = ServerProcess(
        f"{opts.workers} workers",
        opts.target,
        {**common, "GRPC_WORKERS": str(opts.workers), "GRPC_METRICS_PORT": str(metrics_port)},
        cpu=None,
    )
    headers = {"user-id": "bench"}
    client = H2Load(opts.method, opts.message, headers, opts.connections, opts.streams, cpu=None)
    rounds: list[dict[str, float]] = []
    sent_to_many = 0
    try:
        one.start()
        many.start()
        _wait_for_workers(metrics_port, opts.workers)
        for server in (one, many):
            asyncio.run(probe(server.port, opts.method, opts.message, headers))
            client.run(server.port, 2000)  # warm up
        sent_to_many = 2001
        for _ in range(opts.rounds):
            row = {}
            for key, server in (("one", one), ("many", many)):
                assert server.proc is not None
                cpu_before = _cpu_seconds(server.proc.pid)
                result = client.run(server.port, opts.requests)
                if result["succeeded"] != opts.requests:
                    raise RuntimeError(f"{server.name}: only {result['succeeded']} succeeded")
                row[key] = result["rps"]
                row[f"{key}_cpu_s"] = _cpu_seconds(server.proc.pid) - cpu_before
            sent_to_many += opts.requests
            row["ratio"] = row["many"] / row["one"]
            one_cpu_rate = row["one_cpu_s"] * row["one"] / opts.requests  # CPU s per wall s
            many_cpu_rate = row["many_cpu_s"] * row["many"] / opts.requests
            row["cpu_ratio"] = many_cpu_rate / one_cpu_rate if one_cpu_rate else 0.0
            row["efficiency"] = row["one_cpu_s"] / row["many_cpu_s"] if row["many_cpu_s"] else 0.0
            rounds.append(row)
        ok = _ok_count(metrics_port, opts.method)
        if ok != sent_to_many:
            raise RuntimeError(f"{opts.workers} workers counted {ok} OK calls of {sent_to_many}")
    finally:
        for server in (one, many):
            server.stop()
        client.close()
    return {
        "benchmark": "workers",
        "method": opts.method,
        "workers": opts.workers,
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average_at_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "requests_per_round": opts.requests,
        "connections": opts.connections,
        "in_flight": opts.connections * opts.streams,
        "uvloop": opts.uvloop,
        "rounds": rounds,
        "one_median_rps": statistics.median(r["one"] for r in rounds),
        "many_median_rps": statistics.median(r["many"] for r in rounds),
        "ratio_median": statistics.median(r["ratio"] for r in rounds),
        "cpu_ratio_median": statistics.median(r["cpu_ratio"] for r in rounds),
        "efficiency_median": statistics.median(r["efficiency"] for r in rounds),
        "verified_ok_calls_many": sent_to_many,
    }


def report(result: dict[str, Any]) -> str:
    n = result["workers"]
    lines = [
        f"workers: {result['method']}, {result['requests_per_round']} requests per round, "
        f"{result['connections']} connections, {result['in_flight']} in flight, "
        f"{result['cpus']} CPUs, uvloop={result['uvloop']}",
        f"{'round':>5}  {'1 worker req/s':>14}  {f'{n} workers req/s':>16}  {'ratio':>6}  "
        f"{'CPU ratio':>9}  {'efficiency':>10}",
    ]
    for i, row in enumerate(result["rounds"], 1):
        lines.append(
            f"{i:>5}  {row['one']:>14.0f}  {row['many']:>16.0f}  {row['ratio']:>6.3f}  "
            f"{row['cpu_ratio']:>9.3f}  {row['efficiency']:>10.3f}"
        )
    lines.append(
        f"{'median':>5}  {result['one_median_rps']:>14.0f}  {result['many_median_rps']:>16.0f}  "
        f"{result['ratio_median']:>6.3f}  {result['cpu_ratio_median']:>9.3f}  "
        f"{result['efficiency_median']:>10.3f}"
    )
    lines.append(
        f"target >= 1.7 for 2 workers on 2 cores; load average {result['load_average_at_end']:.1f} "
        "at the end (a ratio above the worker count means the machine was contended: "
        "see CPU ratio)"
    )
    return "\n".join(lines) + "\n" + json.dumps(result)
