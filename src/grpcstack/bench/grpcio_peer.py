"""A grpc.aio server process for benchmarks: the seed's design, or grpc.aio bare.

    python -m grpcstack.bench.grpcio_peer --design seed|bare --handlers module:function --port P

``--handlers`` names a function returning ``grpc.GenericRpcHandler``s (the service under test,
e.g. ``platform_services.bench_peers:echo_handlers``). ``seed`` builds the server the way seed
000's ``BaseGrpcServer.create_server()`` does (thread pool of 10, its six interceptors, its
options); ``bare`` is grpc.aio with no interceptor. Unary handlers that return normally are
counted; on SIGTERM the count goes to ``BENCH_COUNT_FILE`` so the bench can check that every
request it sent was answered by the handler.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from .seed_interceptors import seed_chain

COUNT = [0]


class _Counting(grpc.GenericRpcHandler):
    def __init__(self, inner: grpc.GenericRpcHandler) -> None:
        self.inner = inner

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = self.inner.service(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        behavior = handler.unary_unary

        async def counted(request: Any, context: Any) -> Any:
            reply = await behavior(request, context)
            COUNT[0] += 1
            return reply

        return handler._replace(unary_unary=counted)


def _load(target: str) -> Any:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def seed_options() -> list[tuple[str, Any]]:
    """``BaseGrpcServer._build_server_options()`` with the seed's GrpcServerConfig defaults.

    BENCH_SEED_MAX_STREAMS overrides the seed's 100 concurrent streams: with exactly 100 calls
    in flight, grpc core refuses some new streams (RST_STREAM REFUSED_STREAM, 3-30% of calls
    measured) before it has retired the finished ones, so `bench stacks` raises it."""
    return [
        ("grpc.max_concurrent_streams", int(os.environ.get("BENCH_SEED_MAX_STREAMS", "100"))),
        ("grpc.max_receive_message_length", 10 * 1024 * 1024),
        ("grpc.max_send_message_length", 10 * 1024 * 1024),
        ("grpc.keepalive_time_ms", 30000),
        ("grpc.keepalive_timeout_ms", 10000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


async def serve(design: str, handlers: str, port: int) -> None:
    if design == "seed":
        server = grpc.aio.server(
            futures.ThreadPoolExecutor(max_workers=10),
            interceptors=seed_chain(
                "bench",
                os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"),
                int(os.environ.get("BENCH_SEED_RATE_LIMIT", str(10**9))),
            ),
            options=seed_options(),
        )
    else:
        server = grpc.aio.server()
    server.add_generic_rpc_handlers([_Counting(h) for h in _load(handlers)()])
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)
    path = os.environ.get("BENCH_COUNT_FILE")
    if path:
        Path(path).write_text(str(COUNT[0]))  # noqa: ASYNC240 - once, at exit


def main() -> None:
    parser = argparse.ArgumentParser(prog="grpcstack.bench.grpcio_peer")
    parser.add_argument("--design", choices=("seed", "bare"), required=True)
    parser.add_argument("--handlers", required=True, help="module:function -> GenericRpcHandlers")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    # the seed logs each call at INFO; the bench discards the output (as it does for grpcstack)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.uvloop:
        import uvloop

        uvloop.run(serve(args.design, args.handlers, args.port))
    else:
        asyncio.run(serve(args.design, args.handlers, args.port))


if __name__ == "__main__":
    main()
