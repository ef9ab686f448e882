"""`grpcstack bench middleware`: a trivial unary call with no middleware vs all six.

Two server processes (pinned to one core) serve the same target: one with every GRPC_ENABLE_*
off, one with the full default chain (rate limit set high enough never to refuse). h2load
(pinned to the other core) drives them in alternating rounds; the report gives each round's
throughput, the median of each variant and the median per-round ratio. The full server's
``grpc_server_handled_total{grpc_code="OK"}`` must equal the requests sent to it, so the run
measures accepted calls, not errors.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import urllib.request
from dataclasses import dataclass
from typing import Any

from .process import H2Load, ServerProcess, free_port, probe

SWITCHES = (
    "GRPC_ENABLE_METRICS",
    "GRPC_ENABLE_AUTH",
    "GRPC_ENABLE_RATE_LIMITING",
    "GRPC_ENABLE_CORRELATION_ID",
    "GRPC_ENABLE_LOGGING",
    "GRPC_ENABLE_ERROR_HANDLING",
)


@dataclass
class Options:
    target: str
    method: str
    message: bytes
    rounds: int = 5
    requests: int = 20_000
    connections: int = 1
    streams: int = 100
    uvloop: bool = True


def _ok_count(metrics_port: int, method: str) -> float:
    service, name = method.strip("/").split("/")
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read()
    for line in body.decode().splitlines():
        if (
            line.startswith("grpc_server_handled_total{")
            and 'grpc_code="OK"' in line
            and f'grpc_method="{name}"' in line
            and f'grpc_service="{service}"' in line
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def run(opts: Options) -> dict[str, Any]:
    metrics_port = free_port()
    common = {"GRPC_UVLOOP": str(opts.uvloop).lower()}
    bare = ServerProcess("bare", opts.target, {**common, **{k: "false" for k in SWITCHES}})
    full = ServerProcess(
        "full",
        opts.target,
        {
            **common,
            **{k: "true" for k in SWITCHES},
            "GRPC_RATE_LIMIT_MAX_REQUESTS": str(10**9),
            "GRPC_METRICS_PORT": str(metrics_port),
        },
    )
    headers = {"user-id": "bench"}
    client = H2Load(opts.method, opts.message, headers, opts.connections, opts.streams)
    rounds: list[dict[str, float]] = []
    sent_to_full = 0
    try:
        for server in (bare, full):
            server.start()
            asyncio.run(probe(server.port, opts.method, opts.message, headers))
            client.run(server.port, 2000)  # warm up
        sent_to_full = 2001
        for _ in range(opts.rounds):
            row = {}
            for server in (bare, full):
                result = client.run(server.port, opts.requests)
                if result["succeeded"] != opts.requests:
                    raise RuntimeError(f"{server.name}: only {result['succeeded']} succeeded")
                row[server.name] = result["rps"]
            sent_to_full += opts.requests
            row["ratio"] = row["full"] / row["bare"]
            rounds.append(row)
        ok = _ok_count(metrics_port, opts.method)
        if ok != sent_to_full:
            raise RuntimeError(f"full server counted {ok} OK calls of {sent_to_full} sent")
    finally:
        for server in (bare, full):
            server.stop()
        client.close()
    return {
        "benchmark": "middleware",
        "method": opts.method,
        "requests_per_round": opts.requests,
        "in_flight": opts.connections * opts.streams,
        "uvloop": opts.uvloop,
        "rounds": rounds,
        "bare_median_rps": statistics.median(r["bare"] for r in rounds),
        "full_median_rps": statistics.median(r["full"] for r in rounds),
        "ratio_median": statistics.median(r["ratio"] for r in rounds),
        "verified_ok_calls_full": sent_to_full,
    }


def report(result: dict[str, Any]) -> str:
    lines = [
        f"middleware cost: {result['method']}, {result['requests_per_round']} requests per round, "
        f"{result['in_flight']} in flight, uvloop={result['uvloop']}",
        f"{'round':>5}  {'bare req/s':>11}  {'six mw req/s':>12}  {'ratio':>6}",
    ]
    for i, row in enumerate(result["rounds"], 1):
        lines.append(f"{i:>5}  {row['bare']:>11.0f}  {row['full']:>12.0f}  {row['ratio']:>6.3f}")
    lines.append(
        f"{'median':>5}  {result['bare_median_rps']:>11.0f}  {result['full_median_rps']:>12.0f}  "
        f"{result['ratio_median']:>6.3f}   (target >= 0.85)"
    )
    return "\n".join(lines) + "\n" + json.dumps(result)
