"""Server processes and the h2load client for benchmarks (pinned to separate cores)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from grpclib.client import Channel
from grpclib.const import Cardinality
from grpclib.encoding.base import CodecBase


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pin(cpu: int | None) -> list[str]:
    """A `taskset` prefix when there is a core to pin to."""
    if cpu is None or shutil.which("taskset") is None or (os.cpu_count() or 1) <= cpu:
        return []
    return ["taskset", "-c", str(cpu)]


@dataclass
class ServerProcess:
    name: str
    target: str
    env: dict[str, str]
    cpu: int | None = 0
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    #: a peer baseline's own command line ({port} is filled in); default: `grpcstack serve target`
    argv: list[str] | None = None
    start_timeout: float = 30.0

    def start(self) -> None:
        env = dict(os.environ, GRPC_SERVER_HOST="127.0.0.1", LOG_LEVEL="INFO", **self.env)
        serve = [sys.executable, "-m", "grpcstack.cli", "serve", self.target, "--port", "{port}"]
        command = [a.replace("{port}", str(self.port)) for a in (self.argv or serve)]
        self.proc = subprocess.Popen(
            [*pin(self.cpu), *command],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server {self.name} exited with {self.proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server {self.name} did not start")

    def _proc_file(self, name: str) -> str:
        assert self.proc is not None, f"{self.name} is not running"
        return Path(f"/proc/{self.proc.pid}/{name}").read_text()

    def rss_mb(self) -> dict[str, float]:
        """Resident memory now and at its peak (VmHWM), in MB."""
        fields = dict(
            line.split(":", 1) for line in self._proc_file("status").splitlines() if ":" in line
        )
        kb = {k: float(fields[k].split()[0]) for k in ("VmRSS", "VmHWM") if k in fields}
        return {"rss": kb.get("VmRSS", 0.0) / 1024, "peak": kb.get("VmHWM", 0.0) / 1024}

    def cpu_seconds(self) -> float:
        """User + system CPU time the process has used so far."""
        parts = self._proc_file("stat").rsplit(")", 1)[1].split()
        return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")

    def runqueue_seconds(self) -> float:
        """Time the process's threads spent runnable but waiting for a core (schedstat): on a
        shared machine, what its throughput lost to other processes; 0 where unavailable."""
        assert self.proc is not None, f"{self.name} is not running"
        total = 0.0
        for task in Path(f"/proc/{self.proc.pid}/task").glob("*"):
            try:
                total += int((task / "schedstat").read_text().split()[1]) / 1e9
            except (OSError, IndexError, ValueError):
                continue  # a thread that just ended, or no schedstat in this kernel
        return total

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


def grpc_frame(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


class _RawCodec(CodecBase):
    __content_subtype__ = "proto"

    def encode(self, message: bytes, message_type: object) -> bytes:
        return message

    def decode(self, data: bytes, message_type: object) -> bytes:
        return data


async def probe(port: int, method: str, message: bytes, metadata: dict[str, str]) -> bytes:
    """One real call: raises GRPCError unless the server answers OK."""
    ch = Channel("127.0.0.1", port, codec=_RawCodec())
    try:
        async with ch.request(
            method, Cardinality.UNARY_UNARY, bytes, bytes, metadata=metadata, timeout=10
        ) as stream:
            await stream.send_message(message, end=True)
            reply = await stream.recv_message()
            await stream.recv_trailing_metadata()
            return reply or b""
    finally:
        ch.close()


@dataclass
class H2Load:
    """h2load (Debian nghttp2-client) posting one pre-encoded gRPC request over and over."""

    method: str
    message: bytes
    headers: dict[str, str]
    connections: int = 1
    streams: int = 100
    cpu: int | None = 1
    binary: str = field(default_factory=lambda: shutil.which("h2load") or "")

    def __post_init__(self) -> None:
        if not self.binary:
            raise RuntimeError("h2load not found: apt-get install nghttp2-client")
        fd, path = tempfile.mkstemp(prefix="grpcstack-bench-", suffix=".bin")
        with os.fdopen(fd, "wb") as f:
            f.write(grpc_frame(self.message))
        self.body = Path(path)

    def run(
        self,
        port: int,
        requests: int,
        *,
        latencies: list[float] | None = None,
        duration: float = 0.0,
    ) -> dict[str, float]:
        """One h2load run of ``requests`` calls, or of ``duration`` seconds when that is given
        (every connection then sends until the time is up, instead of its equal share of the
        calls); per-request latencies (ms) are appended to ``latencies`` if given."""
        log = self.body.with_suffix(".log")
        amount = ["-D", f"{duration:g}"] if duration else ["-n", str(requests)]
        argv = [
            *pin(self.cpu),
            self.binary,
            *amount,
            "-c",
            str(self.connections),
            "-m",
            str(self.streams),
            "-t",
            "1",
            "-d",
            str(self.body),
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
        ]
        for key, value in self.headers.items():
            argv += ["-H", f"{key}: {value}"]
        if latencies is not None:
            argv.append(f"--log-file={log}")
        argv.append(f"http://127.0.0.1:{port}{self.method}")
        try:
            out = subprocess.run(
                argv, capture_output=True, text=True, timeout=300, check=True
            ).stdout
            if latencies is not None:
                # start (us since epoch) \t HTTP status \t us until the end of the response
                for line in log.read_text().splitlines():
                    cols = line.split("\t")
                    if len(cols) >= 3 and cols[1] == "200":
                        latencies.append(int(cols[2]) / 1000)
        finally:
            log.unlink(missing_ok=True)
        rate = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", out)
        done = re.search(r"requests: \d+ total, (\d+) started, (\d+) done, (\d+) succeeded", out)
        if rate is None or done is None:
            raise RuntimeError(f"cannot parse h2load output:\n{out}")
        return {
            "rps": float(rate.group(3)),
            "succeeded": float(done.group(3)),
            "done": float(done.group(2)),
            # a timed run stops with calls in flight: sent, maybe served, never counted as done
            "started": float(done.group(1)),
        }

    def close(self) -> None:
        self.body.unlink(missing_ok=True)


def redis_server(cpu: int | None = None) -> ServerProcess:
    """A private, non-persistent redis-server on an ephemeral loopback port."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server not found: apt-get install redis-server")
    argv = [binary, "--port", "{port}", "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "no", "--dir", tempfile.gettempdir()]
    return ServerProcess("redis", "", {}, cpu=cpu, argv=argv)


def mongo_server(cpu: int | None = None) -> ServerProcess:
    """A MongoDB wire-protocol server (PyPI secantusdb), in memory, on a loopback port."""
    binary = shutil.which("secantusd-py") or str(Path(sys.executable).parent / "secantusd-py")
    if not Path(binary).exists():
        raise RuntimeError("secantusd-py not found: pip install secantusdb (the platform extra)")
    argv = [binary, "--host", "127.0.0.1", "--port", "{port}", "--storage-path", ":memory:"]
    return ServerProcess("mongodb", "", {}, cpu=cpu, argv=argv, start_timeout=60)


def read_count(path: Path) -> int:
    """The handler count a bench server wrote at its stop (-1 when it wrote none)."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return -1
