"""`grpcstack bench workers`: throughput of ``--workers N`` against one process, same run.

Two servers of the same target run side by side: one plain process, one supervisor with N workers
on one SO_REUSEPORT port (neither pinned: the workers need every core). h2load drives them in
alternating rounds over many connections (the kernel spreads connections, not calls, over the
workers, so a handful of connections would leave one worker idle). A round lasts a fixed time
and every connection sends until it is up, as a service's clients do: with a fixed number of
calls h2load gives every connection the same share, and a worker that drew fewer connections
sits idle once they are done, which measures the kernel's hash rather than the workers. Each
round's ratio is N-worker req/s over 1-worker req/s; the report gives the median. The N-worker
server's merged ``/metrics`` must count exactly the warm-up calls sent to it as OK, and then
between the calls h2load saw answered and the calls it started (a timed round ends with calls
in flight), so the run also checks the aggregating exporter, and measures accepted calls, not
errors.

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
import resource
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
    requests: int = 20_000  # per round, when duration is 0
    duration: float = 5.0  # seconds per round
    connections: int = 16
    streams: int = 20
    uvloop: bool = True


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _process_cpu(pid: int) -> dict[int, float]:
    """user + system CPU seconds of ``pid`` and of each live child (the workers), from /proc."""
    pids = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            pids += [int(p) for p in f.read().split()]
    except OSError:
        pass
    out: dict[int, float] = {}
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[p] = (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime
    return out


def _cpu_seconds(pid: int) -> float:
    """user + system CPU of ``pid`` and its live children (the workers)."""
    return sum(_process_cpu(pid).values())


def _machine_busy() -> float:
    """CPU seconds every process on the machine used so far (all cores; steal counts as busy:
    a core the hypervisor gave away is not ours either)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / _TICKS


def _children_cpu() -> float:
    """CPU seconds of the finished children of this process (h2load runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Run:
    """One h2load run against one server, and what the machine did meanwhile."""

    rps: float
    calls: float  # answered
    started: float  # sent (a timed round ends with some in flight)
    wall: float
    server_cpu: float  # every process of the server (supervisor included)
    worker_cpu: list[float]  # per process, busiest first
    h2load_cpu: float
    others_cores: float  # cores' worth of CPU used by everything else on the machine
    load1: float  # 1-minute load average at the end


def _measure(client: H2Load, pid: int, port: int, opts: Options) -> Run:
    procs_before = _process_cpu(pid)
    machine_before, h2load_before = _machine_busy(), _children_cpu()
    started = time.monotonic()
    result = client.run(port, opts.requests, duration=opts.duration)
    wall = time.monotonic() - started
    machine_after, h2load_after = _machine_busy(), _children_cpu()
    procs_after = _process_cpu(pid)
    if result["succeeded"] != result["done"] or (
        not opts.duration and result["succeeded"] != opts.requests
    ):
        raise RuntimeError(f"port {port}: only {result['succeeded']} calls succeeded: {result}")
    used = {p: cpu - procs_before.get(p, 0.0) for p, cpu in procs_after.items()}
    server_cpu = sum(used.values())
    h2load_cpu = h2load_after - h2load_before
    others = machine_after - machine_before - server_cpu - h2load_cpu
    workers = sorted((cpu for p, cpu in used.items() if p != pid), reverse=True)
    return Run(
        rps=result["rps"],
        calls=result["succeeded"],
        started=result["started"],
        wall=wall,
        server_cpu=server_cpu,
        worker_cpu=workers or [server_cpu],
        h2load_cpu=h2load_cpu,
        others_cores=max(0.0, others / wall) if wall else 0.0,
        load1=os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0,
    )


def _row(one: Run, many: Run, workers: int) -> dict[str, float]:
    """The round's figures. Throughput ratio, and the ones that do not depend on how much of a
    contended machine each server got: calls per CPU second, and the projected ratio."""
    one_rate = one.calls / one.server_cpu if one.server_cpu else 0.0
    many_rate = many.calls / many.server_cpu if many.server_cpu else 0.0
    busiest = many.worker_cpu[0]
    return {
        "one_calls": one.calls,
        "many_calls": many.calls,
        "one": one.rps,
        "many": many.rps,
        "ratio": many.rps / one.rps,
        # CPU per wall second of the N workers over the single process's
        "cpu_ratio": (many.server_cpu / many.wall) / (one.server_cpu / one.wall)
        if one.server_cpu and many.wall
        else 0.0,
        # a worker's calls per CPU second over the single process's (1 = no per-call cost)
        "efficiency": many_rate / one_rate if one_rate else 0.0,
        "one_cpu_s": one.server_cpu,
        "many_cpu_s": many.server_cpu,
        "one_calls_per_cpu_s": one_rate,
        "many_calls_per_cpu_s": many_rate,
        # calls each worker served per CPU second of its own: the load-independent figure
        "calls_per_cpu_s_per_worker": many_rate,
        # the busiest worker's share of the workers' CPU (1/N = perfectly even)
        "busiest_worker_share": busiest / sum(many.worker_cpu) if busiest else 0.0,
        # with a core per worker (and the load generated elsewhere) the round's calls take as
        # long as the busiest worker's CPU time: calls per second of that, over the single
        # process's calls per CPU second
        "projected_ratio": (many.calls / busiest) / one_rate if busiest and one_rate else 0.0,
        "h2load_cores": (one.h2load_cpu + many.h2load_cpu) / (one.wall + many.wall),
        "others_cores": (one.others_cores * one.wall + many.others_cores * many.wall)
        / (one.wall + many.wall),
        "load1": max(one.load1, many.load1),
        "workers": workers,
    }


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


def _wait_for_count(metrics_port: int, method: str, low: float, high: float) -> float:
    """The OK count once it is in [low, high], or the last seen after a bound: calls h2load
    abandoned at a round's end may still be finishing in a worker."""
    deadline = time.monotonic() + 10
    while True:
        ok = _ok_count(metrics_port, method)
        if low <= ok <= high or time.monotonic() > deadline:
            return ok
        time.sleep(0.1)


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
        ok = _ok_count(metrics_port, opts.method)
        if ok != 2001:
            raise RuntimeError(f"{opts.workers} workers counted {ok} OK warm-up calls of 2001")
        answered = started = 2001.0
        for _ in range(opts.rounds):
            assert one.proc is not None and many.proc is not None
            first = _measure(client, one.proc.pid, one.port, opts)
            second = _measure(client, many.proc.pid, many.port, opts)
            answered += second.calls
            started += second.started
            rounds.append(_row(first, second, opts.workers))
        # a call in flight when a timed round ended may have been served after h2load left
        ok = _wait_for_count(metrics_port, opts.method, answered, started)
        if not answered <= ok <= started:
            raise RuntimeError(
                f"{opts.workers} workers counted {ok} OK calls: h2load saw {answered:.0f} "
                f"answered of {started:.0f} sent"
            )
        sent_to_many = int(ok)
    finally:
        for server in (one, many):
            server.stop()
        client.close()

    def median(key: str) -> float:
        return statistics.median(r[key] for r in rounds)

    return {
        "benchmark": "workers",
        "method": opts.method,
        "workers": opts.workers,
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average_at_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "requests_per_round": 0 if opts.duration else opts.requests,
        "seconds_per_round": opts.duration,
        "connections": opts.connections,
        "in_flight": opts.connections * opts.streams,
        "uvloop": opts.uvloop,
        "rounds": rounds,
        "one_median_rps": median("one"),
        "many_median_rps": median("many"),
        "ratio_median": median("ratio"),
        "cpu_ratio_median": median("cpu_ratio"),
        "efficiency_median": median("efficiency"),
        "one_calls_per_cpu_s_median": median("one_calls_per_cpu_s"),
        "calls_per_cpu_s_per_worker_median": median("calls_per_cpu_s_per_worker"),
        "busiest_worker_share_median": median("busiest_worker_share"),
        "projected_ratio_median": median("projected_ratio"),
        "h2load_cores_median": median("h2load_cores"),
        "others_cores_median": median("others_cores"),
        "load1_median": median("load1"),
        "verified_ok_calls_many": sent_to_many,
    }


def report(result: dict[str, Any]) -> str:
    n = result["workers"]
    if result.get("seconds_per_round"):
        per_round = f"{result['seconds_per_round']:g} s per round"
    else:
        per_round = f"{result['requests_per_round']} requests per round"
    lines = [
        f"workers: {result['method']}, {per_round}, {result['connections']} connections, "
        f"{result['in_flight']} in flight, {result['cpus']} CPUs, uvloop={result['uvloop']}",
        f"{'round':>6}  {'1w req/s':>8}  {f'{n}w req/s':>8}  {'ratio':>5}  {'load1':>5}  "
        f"{'others':>6}  {'h2load':>6}  {'1w call/CPUs':>12}  {'per worker':>10}  "
        f"{'busiest':>7}  {'projected':>9}",
    ]

    def line(label: str, row: dict[str, Any]) -> str:
        return (
            f"{label:>6}  {row['one']:>8.0f}  {row['many']:>8.0f}  {row['ratio']:>5.2f}  "
            f"{row['load1']:>5.1f}  {row['others_cores']:>6.2f}  {row['h2load_cores']:>6.2f}  "
            f"{row['one_calls_per_cpu_s']:>12.0f}  {row['calls_per_cpu_s_per_worker']:>10.0f}  "
            f"{row['busiest_worker_share']:>7.2f}  {row['projected_ratio']:>9.2f}"
        )

    for i, row in enumerate(result["rounds"], 1):
        lines.append(line(str(i), row))
    medians = {
        "one": result["one_median_rps"],
        "many": result["many_median_rps"],
        "ratio": result["ratio_median"],
        "load1": result["load1_median"],
        "others_cores": result["others_cores_median"],
        "h2load_cores": result["h2load_cores_median"],
        "one_calls_per_cpu_s": result["one_calls_per_cpu_s_median"],
        "calls_per_cpu_s_per_worker": result["calls_per_cpu_s_per_worker_median"],
        "busiest_worker_share": result["busiest_worker_share_median"],
        "projected_ratio": result["projected_ratio_median"],
    }
    lines.append(line("median", medians))
    lines += [
        "load1: 1-minute load average; others / h2load: cores' worth of CPU that other processes /",
        "the load generator used during the round; call/CPUs: calls per CPU second of the single",
        f"process and of each of the {n} workers (equal = a worker's call costs what it costs",
        "alone); busiest: the busiest worker's share of the workers' CPU (1/N = even);",
        "projected: the throughput ratio with a core per worker and the load generated elsewhere",
        "(the workers' calls per busiest worker's CPU second over the single process's calls per",
        "CPU second), independent of the machine's load.",
        f"target >= 1.7 for 2 workers; measured ratio {result['ratio_median']:.2f}, "
        f"projected {result['projected_ratio_median']:.2f}, CPU ratio "
        f"{result['cpu_ratio_median']:.2f}, efficiency {result['efficiency_median']:.2f}",
    ]
    return "\n".join(lines) + "\n" + json.dumps(result)
