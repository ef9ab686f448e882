"""``grpcstack serve --workers N`` as a real process tree, logging to a file (never a pipe that
could fill up and block the workers)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from calls import call
from cli_process import PYTHONPATH
from conftest import ROOT
from grpclib.const import Status

from gen.echo.v1 import EchoRequest

TARGET = "ops_targets:WhoServer"


class ServeProcess:
    """One ``grpcstack serve`` (supervisor or single server) and its log file."""

    def __init__(self, log: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.log = log
        full = dict(os.environ, PYTHONPATH=PYTHONPATH, GRPC_ENABLE_AUTH="false")
        full.update({"GRPC_SERVER_HOST": "127.0.0.1", "LOG_LEVEL": "INFO"})
        full.pop("GRPC_SERVER_PORT", None)
        full.update(env or {})
        self._logfile = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "grpcstack.cli", "serve", *args],
            stdout=self._logfile,
            stderr=subprocess.STDOUT,
            env=full,
            cwd=str(ROOT / "tests"),
        )
        self.port = 0

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    async def wait_for(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        async with asyncio.timeout(timeout):
            while True:
                found = re.search(pattern, self.text())
                if found:
                    return found
                assert self.proc.poll() is None, (
                    f"exited with {self.proc.returncode}:\n{self.text()}"
                )
                await asyncio.sleep(0.05)

    async def wait_ready(self, workers: int) -> int:
        found = await self.wait_for(rf"{workers} workers on port (\d+)")
        self.port = int(found.group(1))
        return self.port

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.proc.send_signal(signum)

    async def wait_exit(self, timeout: float = 60.0) -> int:
        async with asyncio.timeout(timeout):
            while self.proc.poll() is None:
                await asyncio.sleep(0.05)
        return self.proc.returncode

    def worker_pids(self) -> set[int]:
        """The supervisor's live children (Linux /proc)."""
        pid = self.proc.pid
        children = Path(f"/proc/{pid}/task/{pid}/children")
        if not children.exists():
            return set()
        return {int(p) for p in children.read_text().split()}

    def close(self) -> None:
        """Kill the whole tree (workers first: they run in their own sessions)."""
        pids = self.worker_pids()
        if self.proc.poll() is None:
            self.proc.kill()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(10)
        self._logfile.close()


async def who(port: int, *, sleep: float = 0.0, timeout: float = 20.0) -> int:
    """The pid of the process that served one call on a NEW connection."""
    out = await call("grpclib", port, "Expand", EchoRequest(sleep_seconds=sleep), timeout=timeout)
    assert out.status is Status.OK, (out.status, out.message)
    return int(out.responses[0].message)


async def spread(port: int, wanted: int, *, max_calls: int = 200) -> dict[int, int]:
    """New connections until ``wanted`` distinct processes answered (bounded); calls per pid."""
    seen: dict[int, int] = {}
    for _ in range(max_calls):
        pid = await who(port)
        seen[pid] = seen.get(pid, 0) + 1
        if len(seen) >= wanted and min(seen.values()) >= 2:
            break
    return seen


def scrape(port: int, accept: str | None = None) -> str:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if accept:
        request.add_header("Accept", accept)
    with urllib.request.urlopen(request, timeout=10) as reply:
        return reply.read().decode()


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in an exposition (0.0 if absent)."""
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, rest = line.partition(" ")
        metric, _, label_text = head.partition("{")
        if metric != name:
            continue
        if all(f'{k}="{v}"' in label_text for k, v in labels.items()):
            return float(rest.split()[0])
    return 0.0
