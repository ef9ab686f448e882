"""The load generator process: N concurrent callers working through a fixed list of calls.

    python -m grpcstack.bench.loadgen grpc --port P --method M --requests FILE --concurrency 10
    python -m grpcstack.bench.loadgen caller --target module:factory --port P --requests N ...

``grpc`` sends pre-encoded requests (one hex line each in FILE, in order) with grpcio's asyncio
client (the fastest Python client, the same for every server compared). ``caller`` loads
``factory(port)``, an async context manager yielding an object with ``async call(i) -> status``
and ``payload() -> {"request": bytes, "response": bytes}`` (e.g. the seed 001 worker's HTTP or
gRPC OCR call). The run is bounded by the list; the result
(per-call latency in ms, status, wall time) is one JSON object on stdout. The bench starts this
pinned to its own core.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any


async def _drive(n: int, concurrency: int, call: Callable[[int], Awaitable[str]]) -> dict[str, Any]:
    latencies: list[float] = [0.0] * n
    statuses: Counter[str] = Counter()
    next_index = iter(range(n))

    async def worker() -> None:
        for i in next_index:  # shared iterator: each call is made exactly once
            start = time.perf_counter()
            statuses[await call(i)] += 1
            latencies[i] = (time.perf_counter() - start) * 1000

    began, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - began
    # the client's own CPU (all its threads): is the load generator the bottleneck?
    cpu_s = time.process_time() - cpu
    return {"latencies_ms": latencies, "statuses": dict(statuses), "wall_s": wall, "cpu_s": cpu_s}


async def run_grpc(
    port: int, method: str, requests: list[bytes], metadata: list[tuple[str, str]], concurrency: int
) -> dict[str, Any]:
    import grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = channel.unary_unary(method)

        async def call(i: int) -> str:
            try:
                await stub(requests[i], metadata=metadata, timeout=30)
                return "OK"
            except grpc.aio.AioRpcError as e:
                return e.code().name

        return await _drive(len(requests), concurrency, call)


async def run_caller(target: str, port: int, n: int, concurrency: int) -> dict[str, Any]:
    module, _, name = target.partition(":")
    factory = getattr(importlib.import_module(module), name)
    async with factory(port) as caller:
        result = await _drive(n, concurrency, caller.call)
        # measured after the run, outside the timed calls: one call's body bytes each way
        result["payload"] = caller.payload()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="grpcstack.bench.loadgen")
    sub = parser.add_subparsers(dest="kind", required=True)
    g = sub.add_parser("grpc")
    g.add_argument("--port", type=int, required=True)
    g.add_argument("--method", required=True)
    g.add_argument("--requests", required=True, help="file: one hex-encoded request per line")
    g.add_argument("--metadata", action="append", default=[], help="key=value")
    g.add_argument("--concurrency", type=int, default=10)
    c = sub.add_parser("caller")
    c.add_argument("--target", required=True)
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--requests", type=int, required=True)
    c.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    if args.kind == "grpc":
        with open(args.requests) as f:
            requests = [bytes.fromhex(line.strip()) for line in f if line.strip()]
        metadata = [tuple(m.split("=", 1)) for m in args.metadata]
        result = asyncio.run(
            run_grpc(args.port, args.method, requests, metadata, args.concurrency)  # type: ignore[arg-type]
        )
    else:
        result = asyncio.run(run_caller(args.target, args.port, args.requests, args.concurrency))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
