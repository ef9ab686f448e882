"""`grpcstack bench codec`: betterproto2 vs the plan codec vs upb, then unary RPCs per codec.

Micro: serialize, parse and round trip ops/s for each route on each fixture message, the routes
interleaved within every round. RPC: a server answering with a fixed large response, served with
GRPC_CODEC=betterproto2, with the plan, with the plan plus @cached (stored bytes), and with upb
messages (the reference), driven by h2load (a non-decoding client) at 8 in flight on another core.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from google.protobuf import message_factory

from ..codec import plan
from .process import H2Load, ServerProcess, probe


def load(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _rate(fn: Callable[[], Any], seconds: float) -> float:
    n, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(20):
            fn()
        n += 20
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def _micro_one(message: Any, rounds: int, seconds: float) -> dict[str, dict[str, float]]:
    cls = type(message)
    wire = bytes(message)
    upb_cls = message_factory.GetMessageClass(cls.DESCRIPTOR)
    upb_msg = upb_cls.FromString(wire)
    enc, dec = plan.encoder(cls), plan.decoder(cls)
    assert enc(message) == wire and dec(wire) == cls.parse(wire)  # floats are float32
    routes = {
        "betterproto2": (lambda: bytes(message), lambda: cls.parse(wire)),
        "plan": (lambda: enc(message), lambda: dec(wire)),
        "upb": (upb_msg.SerializeToString, lambda: upb_cls.FromString(wire)),
    }
    samples: dict[str, dict[str, list[float]]] = {
        r: {"serialize": [], "parse": [], "round_trip": []} for r in routes
    }
    for _ in range(rounds):
        for route, (ser, par) in routes.items():
            s, p = _rate(ser, seconds), _rate(par, seconds)
            samples[route]["serialize"].append(s)
            samples[route]["parse"].append(p)
            samples[route]["round_trip"].append(1 / (1 / s + 1 / p))
    table = {r: {k: statistics.median(v) for k, v in ops.items()} for r, ops in samples.items()}
    base = table["betterproto2"]["round_trip"]
    for row in table.values():
        row["x_betterproto2"] = row["round_trip"] / base
    return table


def micro(fixtures: list[str], rounds: int = 5, seconds: float = 0.3) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for target in fixtures:
        message = load(target)()
        out[f"{type(message).__name__} ({len(bytes(message))} B)"] = _micro_one(
            message, rounds, seconds
        )
    return out


def rpc(
    target: str, method: str, request: bytes, rounds: int = 3, requests: int = 3000
) -> dict[str, Any]:
    variants = {
        "betterproto2": {"GRPC_CODEC": "betterproto2"},
        "plan": {"GRPC_CODEC": "plan"},
        "plan + cached bytes": {"GRPC_CODEC": "plan", "BENCH_MODE": "cached"},
        "upb messages": {"BENCH_MODE": "upb"},
    }
    off = {
        k: "false" for k in ("GRPC_ENABLE_AUTH", "GRPC_ENABLE_RATE_LIMITING", "GRPC_ENABLE_LOGGING")
    }
    servers = [ServerProcess(name, target, {**off, **env}) for name, env in variants.items()]
    client = H2Load(method, request, {}, connections=1, streams=8)
    results: dict[str, list[float]] = {s.name: [] for s in servers}
    try:
        for server in servers:
            server.start()
            asyncio.run(probe(server.port, method, request, {}))
            client.run(server.port, 200)
        for _ in range(rounds):
            for server in servers:
                res = client.run(server.port, requests)
                if res["succeeded"] != requests:
                    raise RuntimeError(f"{server.name}: {res['succeeded']} of {requests} succeeded")
                results[server.name].append(res["rps"])
    finally:
        for server in servers:
            server.stop()
        client.close()
    medians = {name: statistics.median(v) for name, v in results.items()}
    base, upb = medians["betterproto2"], medians["upb messages"]
    return {
        name: {"rps": rps, "x_betterproto2": rps / base, "x_upb": rps / upb}
        for name, rps in medians.items()
    }


def report(result: dict[str, Any]) -> str:
    lines = ["codec micro-benchmark (ops/s, medians of interleaved rounds)"]
    for fixture, table in result["micro"].items():
        lines.append(f"  {fixture}")
        lines.append(
            f"    {'route':<13} {'serialize':>10} {'parse':>10} {'round trip':>11} {'x bp2':>7}"
        )
        for route, row in table.items():
            lines.append(
                f"    {route:<13} {row['serialize']:>10.0f} {row['parse']:>10.0f} "
                f"{row['round_trip']:>11.0f} {row['x_betterproto2']:>7.1f}"
            )
    if result.get("rpc"):
        lines.append("unary RPC with the large response, 8 in flight (h2load, req/s)")
        for name, row in result["rpc"].items():
            lines.append(
                f"    {name:<22} {row['rps']:>8.0f}  x{row['x_betterproto2']:.2f} "
                f"of betterproto2, x{row['x_upb']:.2f} of upb"
            )
    return "\n".join(lines) + "\n" + json.dumps(result)
