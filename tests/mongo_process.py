"""A private MongoDB wire-protocol server (secantusdb's secantusd-py) on an ephemeral port."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from redis_process import free_port


def owns_listener(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds the socket listening on TCP ``port`` (Linux /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    inodes.add(f"socket:[{inode}]")
    fds = Path(f"/proc/{pid}/fd")
    with contextlib.suppress(OSError):
        return any(os.readlink(fd) in inodes for fd in fds.iterdir())
    return False


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
            # something answers: it must be ours. Being alive proves nothing (a server still
            # starting up, about to fail its bind, is alive while a stranger holds the port:
            # seen with another checkout's suite running on this machine)
            if owns_listener(proc.pid, self.port):
                return True
            time.sleep(0.1)
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
