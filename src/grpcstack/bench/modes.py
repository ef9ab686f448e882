"""CLI of `grpcstack bench seed000|seed001|stacks`: options, --quick, and the shared output."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

MODES = ("seed000", "seed001", "stacks")


def add_parsers(modes: Any) -> None:
    help_ = {
        "seed000": "seed 000 section 6.2: before (grpcio design) vs after, no cache / L1+L2 cache",
        "seed001": "seed 001: OCR over HTTP/JSON (FastAPI) vs gRPC (grpcstack), real and canned",
        "stacks": "trivial unary: grpcstack full/bare vs grpc.aio bare vs the seed design",
    }
    for name in MODES:
        p = modes.add_parser(name, help=help_[name])
        p.add_argument("--quick", action="store_true", help="a smoke run, under a minute")
        p.add_argument("--out", help="directory for result.json, report.md and charts")
        p.add_argument("--rounds", type=int, help="interleaved rounds (default 3, quick 1)")
        if name == "stacks":
            p.add_argument("--requests", type=int, help="per throughput run (default 20000)")
            p.add_argument("--sequential", type=int, help="per sequential run (default 1000)")
            p.add_argument(
                "--redis-ratelimit",
                action="store_true",
                help="grpcstack's rate limiter on Redis too (the seed's always is)",
            )
            p.add_argument(
                "--profile",
                action="store_true",
                help="py-spy self time of the grpcstack servers under load (to stderr, JSON)",
            )
        if name == "seed000":
            p.add_argument("--requests", type=int, help="per column (default 1000, the seed's)")
            p.add_argument("--concurrency", type=int, default=10, help="clients (the seed's 10)")
            p.add_argument(
                "--profile",
                action="store_true",
                help="py-spy self time of the cache server on L1 hits (to stderr, JSON)",
            )
        if name == "seed001":
            p.add_argument(
                "--requests",
                type=int,
                help="calls per column, canned engine (default 600; RapidOCR runs 1/75)",
            )
            p.add_argument("--concurrency", type=int, default=4, help="callers in flight")


def run(args: argparse.Namespace) -> int:
    from .report import write

    quick = bool(args.quick)
    rounds = args.rounds or (1 if quick else 3)
    extra: dict[str, Any]
    try:
        if args.mode == "stacks":
            from . import stacks

            table, extra = stacks.run(
                stacks.Options(
                    rounds=rounds,
                    requests=args.requests or (2_000 if quick else 20_000),
                    sequential=args.sequential or (200 if quick else 1_000),
                    redis_ratelimit=args.redis_ratelimit,
                    profile=args.profile,
                )
            )
            tables = [table]
        elif args.mode == "seed000":
            from . import seed000

            tables, extra = seed000.run(
                seed000.Options(
                    rounds=rounds,
                    requests=args.requests or (300 if quick else 1_000),
                    concurrency=args.concurrency,
                    profile=args.profile,
                )
            )
        else:
            from . import seed001

            tables, extra = seed001.run(
                seed001.Options(
                    rounds=rounds,
                    requests=args.requests or (20 if quick else 600),
                    concurrency=args.concurrency,
                    quick=quick,
                )
            )
    except RuntimeError as exc:
        print(f"grpcstack bench: {exc}", file=sys.stderr)
        return 1
    default_out = f"bench-results/quick/{args.mode}" if quick else f"docs/bench/{args.mode}"
    out = Path(args.out or default_out)
    command = "grpcstack " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    print(write(tables, out, args.mode, command, extra))
    return 0
