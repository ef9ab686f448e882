"""`grpcstack bench http`: the same unary call over gRPC, over Connect JSON on the HTTP listener,
and seed 001's FastAPI baseline, interleaved in one run.

Three server processes pinned to one core, h2load pinned to the other with the same number of
calls in flight (gRPC: streams on one connection; HTTP/1.1: one call per connection): the
grpcstack server over gRPC and, in the same process, over Connect JSON (HTTP/1.1 and h2c); and
``grpcstack.bench.fastapi_ocr`` on uvicorn answering the same canned OCR result as JSON.
Reported: req/s per variant and round, and the per-round ratios JSON/gRPC and JSON/FastAPI.
Every call is checked: the server's own grpc_server_handled_total{grpc_code="OK"} for grpcstack
over HTTP/1.1 (h2load records no status for Hypercorn's reason-less status line), 2xx otherwise.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .process import H2Load, ServerProcess, free_port, pin

OCR_METHOD = "/ocr.v1.OCRService/ExtractText"
#: OCRRequest(private_image_path="scan.png"), as protobuf bytes and as proto3 JSON
OCR_REQUEST = bytes.fromhex("12087363616e2e706e67")
OCR_JSON = {"private_image_path": "scan.png"}


@dataclass
class Options:
    target: str = "platform_services.bench_fixtures:CannedOcrServer"
    method: str = OCR_METHOD
    request: bytes = OCR_REQUEST  # the same message twice: for gRPC ...
    request_json: dict[str, Any] = field(default_factory=lambda: dict(OCR_JSON))  # ... and JSON
    rounds: int = 5
    requests: int = 2_000
    in_flight: int = 16


@dataclass
class H1Load:
    """h2load over HTTP/1.1 (``--h1``) or h2c, posting one JSON body."""

    url_path: str
    body: bytes
    in_flight: int
    h1: bool = True
    cpu: int | None = 1
    binary: str = field(default_factory=lambda: shutil.which("h2load") or "")

    def __post_init__(self) -> None:
        if not self.binary:
            raise RuntimeError("h2load not found: apt-get install nghttp2-client")
        fd, path = tempfile.mkstemp(prefix="grpcstack-bench-", suffix=".json")
        with os.fdopen(fd, "wb") as f:
            f.write(self.body)
        self.path = Path(path)

    def run(self, port: int, requests: int) -> dict[str, float]:
        conns = (
            ["-c", str(self.in_flight), "-m", "1"]
            if self.h1
            else ["-c", "1", "-m", str(self.in_flight)]
        )
        argv = [
            *pin(self.cpu),
            self.binary,
            *(["--h1"] if self.h1 else []),
            "-n",
            str(requests),
            *conns,
            "-t",
            "1",
            "-d",
            str(self.path),
            "-H",
            "content-type: application/json",
            "-H",
            "user-id: bench",
            f"http://127.0.0.1:{port}{self.url_path}",
        ]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=True).stdout
        rate = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", out)
        done = re.search(r"requests: \d+ total, \d+ started, (\d+) done", out)
        codes = re.search(r"status codes: (\d+) 2xx", out)
        if rate is None or done is None or codes is None:
            raise RuntimeError(f"cannot parse h2load output:\n{out}")
        # h2load's HTTP/1 parser records no status for a response without a reason phrase
        # (Hypercorn sends "HTTP/1.1 200 "): for grpcstack the server's own counters decide
        return {
            "rps": float(rate.group(3)),
            "done": float(done.group(1)),
            "2xx": float(codes.group(1)),
        }

    def close(self) -> None:
        self.path.unlink(missing_ok=True)


class UvicornProcess:
    def __init__(self, app: str, cpu: int | None = 0) -> None:
        self.app = app
        self.cpu = cpu
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                *pin(self.cpu),
                sys.executable,
                "-m",
                "uvicorn",
                self.app,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_http(self.port, self.proc, "fastapi")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


def _wait_http(port: int, proc: subprocess.Popen[bytes], name: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=0.5)
            return
        except urllib.error.HTTPError:
            return  # answering (404/405 is fine)
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{name} did not start")


def ok_calls(metrics_port: int, method: str, protocol: str | None = None) -> float:
    """grpc_server_handled_total{grpc_code="OK"} of ``method`` over ``protocol`` (grpc,
    connect, grpc-web) or every protocol."""
    service, name = method.strip("/").split("/")
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read()
    total = 0.0
    for line in body.decode().splitlines():
        if (
            line.startswith("grpc_server_handled_total{")
            and 'grpc_code="OK"' in line
            and f'grpc_method="{name}"' in line
            and f'grpc_service="{service}"' in line
            and (protocol is None or f'protocol="{protocol}"' in line)
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def ok_calls_settled(
    metrics_port: int, method: str, expected: float, protocol: str | None = None
) -> float:
    """The OK count once it reaches ``expected`` (a call is counted just after its response is
    written), or whatever it is after 10 s."""
    deadline = time.monotonic() + 10
    while (
        value := ok_calls(metrics_port, method, protocol)
    ) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def _post_json(port: int, path: str, body: bytes) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=body,
        headers={"content-type": "application/json", "user-id": "bench"},
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.loads(reply.read())  # type: ignore[no-any-return]


def run(opts: Options) -> dict[str, Any]:
    http_port = free_port()
    metrics_port = free_port()
    server = ServerProcess(
        "grpcstack",
        opts.target,
        {
            "GRPC_HTTP_PORT": str(http_port),
            "GRPC_HTTP_HOST": "127.0.0.1",
            "GRPC_RATE_LIMIT_MAX_REQUESTS": str(10**9),
            "GRPC_METRICS_PORT": str(metrics_port),
        },
    )
    fastapi = UvicornProcess("grpcstack.bench.fastapi_ocr:app")
    body = json.dumps(opts.request_json).encode()
    grpc = H2Load(opts.method, opts.request, {"user-id": "bench"}, 1, opts.in_flight)
    h1 = H1Load(opts.method, body, opts.in_flight)
    h2c = H1Load(opts.method, body, opts.in_flight, h1=False)
    baseline = H1Load("/ocr/extract", body, opts.in_flight)
    rounds: list[dict[str, float]] = []
    try:
        server.start()
        _wait_http(http_port, server.proc, "grpcstack http")  # type: ignore[arg-type]
        fastapi.start()
        ours = _post_json(http_port, opts.method, body)
        theirs = _post_json(fastapi.port, "/ocr/extract", body)
        if len(ours.get("textBoxes", [])) != len(theirs["text_boxes"]):
            raise RuntimeError("the grpcstack and FastAPI answers differ in size")
        variants = {
            "grpc": (grpc, server.port),
            "connect_json_h1": (h1, http_port),
            "connect_json_h2c": (h2c, http_port),
            "fastapi_h1": (baseline, fastapi.port),
        }
        for load, port in variants.values():
            load.run(port, 500)  # warm up
        for _ in range(opts.rounds):
            row: dict[str, float] = {}
            for name, (load, port) in variants.items():
                before = ok_calls(metrics_port, opts.method)
                result = load.run(port, opts.requests)
                if name == "grpc":
                    ok = result["succeeded"]
                elif name == "connect_json_h1":
                    ok = ok_calls_settled(metrics_port, opts.method, before + opts.requests)
                    ok -= before
                else:
                    ok = result["2xx"]
                if ok != opts.requests:
                    raise RuntimeError(f"{name}: only {ok} of {opts.requests} calls were OK")
                row[name] = result["rps"]
            row["json_vs_grpc"] = row["connect_json_h1"] / row["grpc"]
            row["json_vs_fastapi"] = row["connect_json_h1"] / row["fastapi_h1"]
            rounds.append(row)
    finally:
        server.stop()
        fastapi.stop()
        for load in (grpc, h1, h2c, baseline):
            load.close()
    medians = {
        key: statistics.median(r[key] for r in rounds)
        for key in (
            "grpc",
            "connect_json_h1",
            "connect_json_h2c",
            "fastapi_h1",
            "json_vs_grpc",
            "json_vs_fastapi",
        )
    }
    return {
        "benchmark": "http",
        "method": opts.method,
        "requests_per_round": opts.requests,
        "in_flight": opts.in_flight,
        "response_bytes_json": len(json.dumps(ours)),
        "rounds": rounds,
        "medians": medians,
    }


def report(result: dict[str, Any]) -> str:
    m = result["medians"]
    lines = [
        f"HTTP/JSON vs gRPC vs FastAPI: {result['method']}, {result['requests_per_round']} "
        f"requests per round, {result['in_flight']} in flight, JSON reply "
        f"{result['response_bytes_json']} B",
        f"{'round':>6}  {'gRPC':>8}  {'JSON h1':>8}  {'JSON h2c':>8}  {'FastAPI':>8}  "
        f"{'JSON/gRPC':>9}  {'JSON/FastAPI':>12}",
    ]
    keys = ("grpc", "connect_json_h1", "connect_json_h2c", "fastapi_h1")
    for label, r in [*((str(i), r) for i, r in enumerate(result["rounds"], 1)), ("median", m)]:
        rates = "  ".join(f"{r[k]:>8.0f}" for k in keys)
        lines.append(
            f"{label:>6}  {rates}  {r['json_vs_grpc']:>9.3f}  {r['json_vs_fastapi']:>12.3f}"
        )
    return "\n".join(lines) + "\n" + json.dumps(result)
