"""A private MongoDB wire-protocol server (secantusdb's secantusd-py) on an ephemeral port."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from redis_process import free_port


class MongoProcess:
    def __init__(self, storage: str = ":memory:") -> None:
        binary = shutil.which("secantusd-py") or str(Path(sys.executable).parent / "secantusd-py")
        if not Path(binary).exists():
            raise RuntimeError("secantusd-py not installed (pip install secantusdb)")
        self.binary = binary
        self.storage = storage
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_before = False

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/grpcstack_test"

    def start(self) -> None:
        """Start on a free port; a start that fails because the probed port was taken meanwhile
        is retried on a new port."""
        for _ in range(5):
            if self._start_once():
                self.started_before = True
                return
            if self.started_before:  # a restart keeps its port: clients point at it
                break
            self.port = free_port()
        raise RuntimeError("secantusd-py did not start (5 tries, or a restart on its old port)")

    def _start_once(self) -> bool:
        self.proc = proc = subprocess.Popen(
            [
                self.binary,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--storage-path",
                self.storage,
                "--log-level",
                "WARNING",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self.stop()
                return False
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            except OSError:
                time.sleep(0.1)
                continue
            if proc.poll() is None:  # still alive: the port is its own, not a stranger's
                return True
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
        # kill() returns before the target has stopped: a query sent in between is still answered
        self._wait_state(stopped=True)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
        self._wait_state(stopped=False)

    def _wait_state(self, *, stopped: bool, within: float = 10.0) -> None:
        """Until /proc says the process is (not) stopped (state T), bounded."""
        assert self.proc is not None
        stat = Path(f"/proc/{self.proc.pid}/stat")
        end = time.monotonic() + within
        while time.monotonic() < end:
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
            if (state == "T") == stopped:
                return
            time.sleep(0.005)
        raise TimeoutError(f"secantusd did not {'stop' if stopped else 'continue'} in {within} s")
