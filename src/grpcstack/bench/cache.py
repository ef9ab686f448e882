"""`grpcstack bench cache`: p50/p99 per tier, and what each layer above a raw lookup costs.

For each tier the same 2 KB values are read by 10 concurrent tasks three ways: the raw store
(dict / redis-py GET / DuckDB SELECT), the aiocache backend, and the TieredCache (that tier
alone, with envelope, metrics and timeouts); for L2 also over the MultiplexedRedis connection
the server uses (REDIS_MULTIPLEXED), raw and tiered. Rounds are interleaved; each variant reports
latency and this process's CPU per read. Redis is the given URL or a private redis-server started
for the run.

Versioned keys: an L2 hit of a method at generation 3 (the generation looked up per call, from
this process's copy) against the same cache with versioning off; the target is <= 1.10x.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..cache.duckdb import DuckDBCache
from ..cache.memory import LRUMemoryCache
from ..cache.redis import SharedRedisCache
from ..cache.tiered import Tier, TieredCache
from ..duckdb_store import DuckDBStore
from ..redis_multiplexed import MultiplexedRedis

KEYS = 200
VALUE = os.urandom(2048)


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _measure(
    op: Callable[[str], Awaitable[Any]],
    requests: int,
    concurrency: int,
    cpu: list[float] | None = None,
) -> list[float]:
    """Latency samples; ``cpu`` gets this process's CPU seconds per read appended."""
    samples: list[float] = []
    per_task = requests // concurrency

    async def worker(offset: int) -> None:
        for i in range(per_task):
            key = f"k{(offset + i) % KEYS}"
            t0 = time.perf_counter()
            await op(key)
            samples.append(time.perf_counter() - t0)

    started = time.process_time()
    await asyncio.gather(*(worker(n * 7) for n in range(concurrency)))
    if cpu is not None:
        cpu.append((time.process_time() - started) / max(1, per_task * concurrency))
    return samples


async def run(
    redis_url: str,
    requests: int = 2000,
    concurrency: int = 10,
    rounds: int = 3,
    pairs: int = 20,
) -> dict[str, Any]:
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url, db=15)
    mux = MultiplexedRedis.from_url(redis_url, db=15)
    tmp = tempfile.mkdtemp(prefix="grpcstack-bench-")
    store = DuckDBStore(os.path.join(tmp, "bench.duckdb"))
    expiry = time.time() + 3600
    l1 = LRUMemoryCache(maxsize=KEYS * 4)  # raw, generation-0 and generation-3 copies
    l2 = SharedRedisCache(redis)
    l2_mux = SharedRedisCache(redis, fast=mux)
    l3 = DuckDBCache(store)
    tiered = {
        "l1": TieredCache([Tier("l1", l1, 3600)], service="bench", namespace="b1"),
        "l2": TieredCache([Tier("l2", l2, 3600, 1.0)], service="bench", namespace="b2"),
        "l3": TieredCache([Tier("l3", l3, 3600, 2.0)], service="bench", namespace="b3"),
        "l2 mux": TieredCache([Tier("l2", l2_mux, 3600, 1.0)], service="bench", namespace="b2"),
        "versioned": TieredCache([Tier("l2", l2, 3600, 1.0)], service="bench", namespace="bv"),
        "l1 unversioned": TieredCache(
            [Tier("l1", l1, 3600)], service="bench", namespace="b1", versioned=False
        ),
        "unversioned": TieredCache(
            [Tier("l2", l2, 3600, 1.0)], service="bench", namespace="bu", versioned=False
        ),
    }
    method = "/bench.v1.Svc/Get"
    for _ in range(3):
        await tiered["versioned"].invalidate_generation(method, "none")
    l1_gen3 = TieredCache([Tier("l1", l1, 3600)], service="bench", namespace="b1")
    for _ in range(3):
        await l1_gen3.invalidate_generation(method, "none")
    raw_dict: dict[str, bytes] = {}
    try:
        for i in range(KEYS):
            key = f"k{i}"
            raw_dict[key] = VALUE
            for cache in tiered.values():
                await cache.set(key, VALUE, 3600, method=method)
            await redis.set(f"raw:{key}", VALUE)
            await l1.set(f"api:{key}", (expiry, 0, VALUE))
        await l3.flush()

        async def dict_get(k: str) -> Any:
            return raw_dict.get(k)

        async def duck_raw(k: str) -> Any:
            return await store.query("SELECT value FROM grpc_cache WHERE key = ?", [f"b3:{k}:g0"])

        variants: dict[str, Callable[[str], Awaitable[Any]]] = {
            "l1 raw dict": dict_get,
            "l1 aiocache": lambda k: l1.get(f"api:{k}"),
            "l1 tiered": lambda k: tiered["l1"].get(k, method=method),
            "l2 raw redis GET": lambda k: redis.get(f"raw:{k}"),
            "l2 aiocache": lambda k: l2.get(f"b2:{k}:g0"),
            "l2 tiered": lambda k: tiered["l2"].get(k, method=method),
            "l2 raw multiplexed GET": lambda k: mux.get(f"raw:{k}"),
            "l2 tiered multiplexed": lambda k: tiered["l2 mux"].get(k, method=method),
            "l2 unversioned": lambda k: tiered["unversioned"].get(k, method=method),
            "l2 versioned": lambda k: tiered["versioned"].get(k, method=method),
            "l3 raw duckdb": duck_raw,
            "l3 aiocache": lambda k: l3.get(f"b3:{k}:g0"),
            "l3 tiered": lambda k: tiered["l3"].get(k, method=method),
        }
        results: dict[str, list[float]] = {name: [] for name in variants}
        cpu: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(rounds):
            for name, op in variants.items():
                results[name] += await _measure(op, requests, concurrency, cpu[name])
        # the versioning cost is small next to the noise of a shared machine: many short
        # alternating pairs (order flipped every pair), one p50 ratio per pair, their median
        for i in range(KEYS):
            await l1_gen3.set(f"k{i}", VALUE, 3600, method=method)

        async def paired(
            base_op: Any, versioned_op: Any, n_pairs: int
        ) -> list[tuple[float, float]]:
            out = []
            for n in range(n_pairs):
                ops = (base_op, versioned_op) if n % 2 == 0 else (versioned_op, base_op)
                a = _pct(await _measure(ops[0], 500, concurrency), 0.5)
                b = _pct(await _measure(ops[1], 500, concurrency), 0.5)
                out.append((a, b) if n % 2 == 0 else (b, a))
            return out

        l2_pairs = await paired(variants["l2 unversioned"], variants["l2 versioned"], pairs)
        pair_ratios = [v / max(b, 1e-9) for b, v in l2_pairs]
        # on L1 a hit is CPU only: the difference is what versioning adds to any hit
        l1_pairs = await paired(
            lambda k: tiered["l1 unversioned"].get(k, method=method),
            lambda k: l1_gen3.get(k, method=method),
            pairs,
        )
        added_us = statistics.median(v - b for b, v in l1_pairs) * 1e6
    finally:
        await redis.flushdb()
        await redis.aclose()
        await mux.close()
        await store.close()
    table = {
        name: {
            "p50_us": _pct(s, 0.5) * 1e6,
            "p99_us": _pct(s, 0.99) * 1e6,
            "mean_us": statistics.fmean(s) * 1e6,
            "cpu_us": statistics.median(cpu[name]) * 1e6,
        }
        for name, s in results.items()
    }
    for tier in ("l1", "l2", "l3"):
        raw = next(v for k, v in table.items() if k.startswith(tier) and "raw" in k)
        for layer in ("aiocache", "tiered"):
            table[f"{tier} {layer}"]["x_raw_p50"] = table[f"{tier} {layer}"]["p50_us"] / max(
                raw["p50_us"], 1e-9
            )
    table["l2 tiered multiplexed"]["x_raw_p50"] = table["l2 tiered multiplexed"]["p50_us"] / max(
        table["l2 raw multiplexed GET"]["p50_us"], 1e-9
    )
    versioned, unversioned = table["l2 versioned"], table["l2 unversioned"]
    versioning = {
        "pairs": pairs,
        "median_pair_p50_ratio": statistics.median(pair_ratios),
        "pair_p50_ratio_quartiles": statistics.quantiles(pair_ratios, n=4),
        "p50_ratio_all_rounds": versioned["p50_us"] / max(unversioned["p50_us"], 1e-9),
        "added_us_per_hit_l1_paired": added_us,
        "added_share_of_l2_p50": added_us / max(unversioned["p50_us"], 1e-9),
        "target": 1.10,
    }
    return {
        "benchmark": "cache",
        "versioned_l2_hit": versioning,
        "value_bytes": len(VALUE),
        "concurrency": concurrency,
        "requests_per_round": requests,
        "rounds": rounds,
        "results": table,
    }


def report(result: dict[str, Any]) -> str:
    lines = [
        f"cache tiers: {result['value_bytes']} B values, {result['concurrency']} tasks, "
        f"{result['rounds']} rounds x {result['requests_per_round']} gets per variant",
        f"{'variant':<24} {'p50 us':>9} {'p99 us':>9} {'x raw p50':>10} {'CPU us/read':>12}",
    ]
    for name, row in result["results"].items():
        ratio = f"{row['x_raw_p50']:.2f}" if "x_raw_p50" in row else "-"
        lines.append(
            f"{name:<24} {row['p50_us']:>9.1f} {row['p99_us']:>9.1f} {ratio:>10} "
            f"{row['cpu_us']:>12.1f}"
        )
    v = result["versioned_l2_hit"]
    q1, _, q3 = v["pair_p50_ratio_quartiles"]
    lines.append(
        f"versioned L2 hit vs unversioned: median of {v['pairs']} paired p50 ratios "
        f"{v['median_pair_p50_ratio']:.2f}x (quartiles {q1:.2f}-{q3:.2f}; target <= "
        f"{v['target']:.2f}x); on L1 (CPU only) versioning adds "
        f"{v['added_us_per_hit_l1_paired']:.2f} us per hit = "
        f"{100 * v['added_share_of_l2_p50']:.3f}% of an L2 hit's p50"
    )
    return "\n".join(lines) + "\n" + json.dumps(result)
