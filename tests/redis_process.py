"""A private redis-server on an ephemeral port, for tests that need isolation or kill it."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports: all are bound at once, so none is handed out twice."""
    with contextlib.ExitStack() as stack:
        socks = [
            stack.enter_context(
                socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            )
            for _ in range(n)
        ]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


class RedisProcess:
    def __init__(
        self, workdir: Path, extra_args: list[str] | None = None, *, cluster_bus: bool = False
    ) -> None:
        """``cluster_bus``: a Redis Cluster node, whose bus listens on a second port (by default
        port + 10000, which may be taken or out of range: here a free one, picked with the port)."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.binary = binary
        self.workdir = workdir
        self.cluster_bus = cluster_bus
        self.port, self.bus_port = self._pick_ports()
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_before = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start on a free port. The port is probed, then bound by redis-server: another process
        can take it in between, so a start that fails that way is retried on new ports (the bus
        port too: a bus port taken in between also makes redis-server exit), and the server
        answering is checked to be ours (its process id)."""
        for _ in range(5):
            if self._start_once():
                self.started_before = True
                return
            if self.started_before:  # a restart keeps its port: clients point at it
                break
            self.port, self.bus_port = self._pick_ports()
        raise RuntimeError("redis-server did not start (5 tries, or a restart on its old port)")

    def _pick_ports(self) -> tuple[int, int | None]:
        if not self.cluster_bus:
            return free_port(), None
        port, bus = free_ports(2)
        return port, bus

    def _start_once(self) -> bool:
        bus = [] if self.bus_port is None else ["--cluster-port", str(self.bus_port)]
        self.proc = proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                "--loglevel",
                "warning",
                *bus,
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"INFO server\r\n")
                    if f"process_id:{proc.pid}\r\n".encode() in _read_bulk(s):
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def pause(self) -> None:
        """SIGSTOP: the port stays open but nothing answers (a hung server, not a dead one)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


def _read_bulk(sock: socket.socket) -> bytes:
    """One RESP bulk-string reply (INFO's), read until its announced length has arrived."""
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n")
    size = int(head[1:]) if head.startswith(b"$") else 0
    while len(body) < size:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return body
