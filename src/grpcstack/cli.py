"""The ``grpcstack`` command line."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any, TextIO

from . import logs
from .definition import ServerDefinitionError
from .extras import MissingExtraError
from .server import AsyncBaseServer
from .settings import ServerSettings, SettingsError, SettingsWarning


class TargetError(Exception):
    """A ``module:Class`` target that cannot be served."""


def load_server_class(target: str) -> type[AsyncBaseServer]:
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise TargetError(f"target {target!r} must look like 'package.module:ServerClass'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise TargetError(f"cannot import module {module_name!r}: {exc}") from None
        raise  # the module exists but one of its own imports failed: show the real traceback
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise TargetError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not (isinstance(obj, type) and issubclass(obj, AsyncBaseServer)):
        raise TargetError(f"{target!r} is not an AsyncBaseServer subclass")
    return obj


def add_app_dir(app_dir: str) -> None:
    """Import targets from ``app_dir`` (default: the current folder) first, as uvicorn does."""
    path = os.path.abspath(app_dir)
    if not os.path.isdir(path):
        raise TargetError(f"--app-dir {app_dir!r} is not a folder")
    if path not in sys.path:
        sys.path.insert(0, path)


def build_server(target: str, port: int | None = None) -> AsyncBaseServer:
    cls = load_server_class(target)
    overrides = {} if port is None else {"GRPC_SERVER_PORT": port}
    settings: ServerSettings = cls.settings_class.load(**overrides)
    return cls(settings)


def run_server(server: AsyncBaseServer) -> None:
    """Run ``server.serve()`` on uvloop when enabled and installed, else on asyncio."""
    if server.settings.GRPC_UVLOOP:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(server.serve())
            return
    asyncio.run(server.serve())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grpcstack",
        description="Serve and operate grpcstack gRPC servers.",
        epilog="Settings come from the environment and .env (GRPC_SERVER_PORT, "
        "GRPC_SERVER_ENABLE_REFLECTION, GRPC_MAX_MESSAGE_LENGTH, ...); see the README.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        help="serve an AsyncBaseServer subclass until SIGINT/SIGTERM",
        description="Load package.module:ServerClass, read its settings class from the "
        "environment and serve. The first SIGINT/SIGTERM drains gracefully "
        "(GRPC_SERVER_GRACE_PERIOD_SECONDS) and exits 0; a second one exits at once.",
    )
    serve.add_argument("target", help="the server class, as package.module:ServerClass")
    serve.add_argument(
        "--app-dir",
        default=".",
        help="folder to import the target (and your gen/) from, put first on sys.path "
        "(default: the current folder)",
    )
    serve.add_argument("--port", type=int, help="override GRPC_SERVER_PORT (0 = any free port)")
    serve.add_argument(
        "--reload-free",
        action="store_true",
        help="serve without a code reloader; this is the only mode grpcstack has, so the flag "
        "is accepted for scripts that pass it and changes nothing",
    )
    serve.add_argument("--log-level", help="override LOG_LEVEL (DEBUG, INFO, WARNING ...)")
    serve.add_argument(
        "--workers",
        type=int,
        help="override GRPC_WORKERS: N processes on one port (SO_REUSEPORT) under a supervisor "
        "that restarts crashed ones and forwards SIGTERM; 0 = one per CPU",
    )

    protos = sub.add_parser(
        "protos",
        help="generate betterproto2 code from .proto files (needs grpcstack[codegen])",
        description="Run protoc ONCE over every .proto under --proto-dir with the betterproto2 "
        "options this stack needs, into an emptied --out folder (replaced only when protoc "
        "succeeds). The compiler must match the betterproto2 runtime's minor version.",
    )
    protos.add_argument("--proto-dir", default="protos", help="where the .proto files are")
    protos.add_argument("--out", default="gen", help="the generated package (emptied first)")
    protos.add_argument(
        "-I", "--include", action="append", default=[], help="extra import folder (repeatable)"
    )

    bench = sub.add_parser("bench", help="benchmarks, variants interleaved in one run")
    modes = bench.add_subparsers(dest="mode", metavar="MODE", required=True)
    mw = modes.add_parser(
        "middleware",
        help="trivial unary call: no middleware vs all six (h2load, separate cores)",
    )
    mw.add_argument("--target", required=True, help="package.module:ServerClass to serve")
    mw.add_argument("--method", required=True, help="full method, e.g. /echo.v1.EchoService/Echo")
    mw.add_argument("--request-hex", default="", help="the request message, hex-encoded")
    mw.add_argument("--rounds", type=int, default=5)
    mw.add_argument("--requests", type=int, default=20_000, help="requests per round")
    mw.add_argument("--connections", type=int, default=1)
    mw.add_argument("--streams", type=int, default=100, help="in flight per connection")
    mw.add_argument("--no-uvloop", action="store_true", help="serve on plain asyncio")
    codec = modes.add_parser("codec", help="betterproto2 vs plan vs upb; unary RPC per codec")
    codec.add_argument(
        "--fixture",
        action="append",
        required=True,
        help="module:function returning a message (repeatable)",
    )
    codec.add_argument("--rpc-target", help="module:ServerClass answering --rpc-method")
    codec.add_argument("--rpc-method", help="full method for the RPC part")
    codec.add_argument("--rpc-request-hex", default="", help="its request, hex-encoded")
    codec.add_argument("--rounds", type=int, default=5)
    wk = modes.add_parser(
        "workers", help="throughput of --workers N vs one process, same run (h2load)"
    )
    wk.add_argument("--target", required=True, help="package.module:ServerClass to serve")
    wk.add_argument("--method", required=True, help="full method, e.g. /echo.v1.EchoService/Echo")
    wk.add_argument("--request-hex", default="", help="the request message, hex-encoded")
    wk.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    wk.add_argument("--rounds", type=int, default=5)
    wk.add_argument(
        "--duration", type=float, default=5.0, help="seconds per round (0: --requests per round)"
    )
    wk.add_argument(
        "--requests", type=int, default=20_000, help="requests per round (no --duration)"
    )
    wk.add_argument("--connections", type=int, default=16)
    wk.add_argument("--streams", type=int, default=20, help="in flight per connection")
    wk.add_argument("--no-uvloop", action="store_true", help="serve on plain asyncio")
    cl = modes.add_parser(
        "client", help="grpcstack Client vs grpcio vs grpclib: p50/p99, req/s at 1/10/100"
    )
    cl.add_argument("--target", required=True, help="package.module:ServerClass to serve")
    cl.add_argument("--method", required=True, help="full method, e.g. /echo.v1.EchoService/Echo")
    cl.add_argument("--request-hex", default="", help="the request message, hex-encoded")
    cl.add_argument("--rounds", type=int, default=3)
    cl.add_argument("--sequential", type=int, default=2000, help="sequential calls per round")
    cl.add_argument("--requests", type=int, default=5000, help="calls per throughput run")
    cl.add_argument("--full-chain", action="store_true", help="server with the default chain")
    cl.add_argument("--profile", action="store_true", help="cProfile the grpcstack client")
    cl.add_argument("--uvloop", action="store_true", help="run the clients on uvloop")
    cache = modes.add_parser("cache", help="p50/p99 per cache tier, and each layer's overhead")
    cache.add_argument("--redis-url", help="default: a private redis-server for the run")
    cache.add_argument("--requests", type=int, default=2000, help="gets per variant per round")
    cache.add_argument("--rounds", type=int, default=3)
    http = modes.add_parser(
        "http", help="one unary call over gRPC, Connect JSON (h1, h2c) and FastAPI (seed 001)"
    )
    http.add_argument(
        "--target",
        default="platform_services.bench_fixtures:CannedOcrServer",
        help="package.module:ServerClass to serve (default: the canned OCR server)",
    )
    http.add_argument("--method", default="/ocr.v1.OCRService/ExtractText")
    http.add_argument("--request-hex", help="the request as protobuf, hex (default: the OCR one)")
    http.add_argument("--request-json", help="the same request as proto3 JSON")
    http.add_argument("--rounds", type=int, default=5)
    http.add_argument("--requests", type=int, default=2_000, help="requests per round")
    http.add_argument("--in-flight", type=int, default=16)
    flood = modes.add_parser(
        "flood", help="health latency while another connection sends rapid resets"
    )
    flood.add_argument("--target", default="platform_services.echo:EchoServer")
    flood.add_argument("--seconds", type=float, default=5.0, help="per phase")
    flood.add_argument("--pairs", type=int, default=20_000, help="HEADERS+RST pairs a connection")
    from .bench.modes import add_parsers as add_seed_modes

    add_seed_modes(modes)  # seed000, seed001, stacks
    return parser


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
    _default: Any = warnings.showwarning,
) -> None:
    """Settings warnings are for the operator: one line, no source location."""
    if issubclass(category, SettingsWarning):
        print(f"grpcstack: warning: {message}", file=file or sys.stderr)
    else:
        _default(message, category, filename, lineno, file, line)


def main(argv: Sequence[str] | None = None) -> int:
    warnings.showwarning = _show_warning
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "bench":
        return _bench(args)
    if args.command == "protos":
        return _protos(args)
    if args.command != "serve":
        parser.print_help()
        return 2
    if args.port is not None and not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port} is not a port number (0-65535)")
    if args.workers is not None and args.workers < 0:
        parser.error(f"--workers {args.workers} must be 0 (one per CPU) or more")
    try:
        add_app_dir(args.app_dir)
        server = build_server(args.target, args.port)
    except (TargetError, SettingsError) as exc:
        print(f"grpcstack: {exc}", file=sys.stderr)
        return 2
    logs.configure((args.log_level or server.settings.LOG_LEVEL).upper())
    from . import workers

    n = workers.worker_count(
        args.workers if args.workers is not None else server.settings.GRPC_WORKERS
    )
    if n > 1:
        try:
            return workers.supervise(args.target, server, n, args.log_level)
        except OSError as exc:
            print(f"grpcstack: cannot serve: {exc}", file=sys.stderr)
            return 1
    workers.prepare_worker(server)
    try:
        run_server(server)
    except (ServerDefinitionError, MissingExtraError) as exc:
        print(f"grpcstack: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. the port is taken
        print(f"grpcstack: cannot serve: {exc}", file=sys.stderr)
        return 1
    return 0


def _protos(args: argparse.Namespace) -> int:
    from .protos import CodegenError, generate

    try:
        result = generate(args.proto_dir, args.out, args.include)
    except CodegenError as exc:
        print(f"grpcstack protos: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"generated {result.files} files from {len(result.protos)} protos into {result.out}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .bench import modes as seed_modes

    if args.mode in seed_modes.MODES:
        return seed_modes.run(args)
    if args.mode == "cache":
        return _bench_cache(args)
    if args.mode == "workers":
        return _bench_workers(args)
    if args.mode == "http":
        return _bench_http(args)
    if args.mode == "flood":
        from .bench import flood

        print(flood.report(flood.run(args.target, args.seconds, args.pairs)))
        return 0
    if args.mode == "codec":
        from .bench import codec

        result: dict[str, object] = {
            "benchmark": "codec",
            "micro": codec.micro(args.fixture, args.rounds),
        }
        if args.rpc_target and args.rpc_method:
            try:
                result["rpc"] = codec.rpc(
                    args.rpc_target, args.rpc_method, bytes.fromhex(args.rpc_request_hex)
                )
            except RuntimeError as exc:
                print(f"grpcstack bench: {exc}", file=sys.stderr)
                return 1
        print(codec.report(result))
        return 0
    if args.mode == "client":
        return _bench_client(args)
    from .bench import middleware

    opts = middleware.Options(
        target=args.target,
        method=args.method,
        message=bytes.fromhex(args.request_hex),
        rounds=args.rounds,
        requests=args.requests,
        connections=args.connections,
        streams=args.streams,
        uvloop=not args.no_uvloop,
    )
    return _run_and_report(middleware, opts)


def _run_and_report(module: Any, opts: Any, errors: Any = RuntimeError) -> int:
    """Run one benchmark module and print its report; a failure is one line and exit 1."""
    try:
        result = module.run(opts)
    except errors as exc:
        print(f"grpcstack bench: {exc}", file=sys.stderr)
        return 1
    print(module.report(result))
    return 0


def _bench_workers(args: argparse.Namespace) -> int:
    from .bench import workers

    if args.workers < 2:
        print("grpcstack bench workers: --workers must be 2 or more", file=sys.stderr)
        return 2
    opts = workers.Options(
        target=args.target,
        method=args.method,
        message=bytes.fromhex(args.request_hex),
        workers=args.workers,
        rounds=args.rounds,
        requests=args.requests,
        duration=args.duration,
        connections=args.connections,
        streams=args.streams,
        uvloop=not args.no_uvloop,
    )
    return _run_and_report(workers, opts)


def _bench_client(args: argparse.Namespace) -> int:
    from .bench import client

    opts = client.Options(
        target=args.target,
        method=args.method,
        message=bytes.fromhex(args.request_hex),
        rounds=args.rounds,
        sequential=args.sequential,
        requests=args.requests,
        full_chain=args.full_chain,
        profile=args.profile,
        uvloop=args.uvloop,
    )
    return _run_and_report(client, opts)


def _bench_http(args: argparse.Namespace) -> int:
    import json
    import subprocess

    from .bench import http

    opts = http.Options(
        target=args.target,
        method=args.method,
        rounds=args.rounds,
        requests=args.requests,
        in_flight=args.in_flight,
    )
    if args.request_hex is not None:
        opts.request = bytes.fromhex(args.request_hex)
    if args.request_json is not None:
        opts.request_json = json.loads(args.request_json)
    return _run_and_report(http, opts, (RuntimeError, OSError, subprocess.CalledProcessError))


def _bench_cache(args: argparse.Namespace) -> int:
    import shutil
    import subprocess
    import tempfile
    import time

    from .bench import cache
    from .bench.process import free_port

    url, proc = args.redis_url, None
    if url is None:
        binary = shutil.which("redis-server")
        if binary is None:
            print("grpcstack bench: give --redis-url or install redis-server", file=sys.stderr)
            return 1
        port = free_port()
        proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                tempfile.gettempdir(),
            ],
            stdout=subprocess.DEVNULL,
        )
        url = f"redis://127.0.0.1:{port}"
        time.sleep(0.3)
    try:
        result = asyncio.run(cache.run(url, args.requests, rounds=args.rounds))
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
    print(cache.report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
