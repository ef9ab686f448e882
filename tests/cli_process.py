"""`grpcstack serve` as a real subprocess on an ephemeral port (it logs the port it bound)."""

from __future__ import annotations

import asyncio
import os
import re
import sys

from conftest import ROOT

PYTHONPATH = os.pathsep.join([str(ROOT / "src"), str(ROOT), str(ROOT / "tests")])


async def start_cli(
    target: str = "platform_services.echo:EchoServer",
    *extra: str,
    python: str = sys.executable,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    stdout: int | None = None,
    startup_timeout: float = 30,
) -> tuple[asyncio.subprocess.Process, int]:
    """Start ``python -m grpcstack.cli serve TARGET --port 0``; return it and its port. Its
    stderr is read all along (``stderr_of``); pass ``stdout=PIPE`` to read the access lines."""
    full = dict(os.environ, PYTHONPATH=PYTHONPATH, GRPC_ENABLE_AUTH="false")
    full.pop("GRPC_SERVER_PORT", None)
    full.update(env or {})
    argv = [python, "-m", "grpcstack.cli", "serve", target, "--port", "0", *extra]
    return await start_command(
        argv,
        env=full,
        cwd=cwd or str(ROOT / "tests"),
        stdout=stdout,
        startup_timeout=startup_timeout,
    )


async def start_command(
    argv: list[str],
    *,
    env: dict[str, str],
    cwd: str,
    stdout: int | None = None,
    startup_timeout: float = 30,
) -> tuple[asyncio.subprocess.Process, int]:
    """Start a command that serves and logs "on port N"; return it and the port."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=stdout, stderr=asyncio.subprocess.PIPE, env=env, cwd=cwd
    )
    assert proc.stderr is not None
    seen: list[str] = []
    try:
        async with asyncio.timeout(startup_timeout):
            while True:
                line = (await proc.stderr.readline()).decode()
                assert line, "the server exited before serving:\n" + "".join(seen)
                seen.append(line)
                if found := re.search(r"on port (\d+)", line):
                    break
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    # keep reading stderr: a server whose pipe is never drained blocks once the pipe is full
    _LOGS[proc.pid] = log = StderrLog(seen)
    log.task = asyncio.create_task(log.drain(proc.stderr))
    return proc, int(found.group(1))


class StderrLog:
    """Every stderr line of a started server, read as it comes."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def drain(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.lines.append(line.decode(errors="replace"))
            self.changed.set()

    async def wait_for(self, text: str, timeout: float = 10) -> str:
        """The first line containing ``text``, waiting up to ``timeout`` seconds for it."""
        async with asyncio.timeout(timeout):
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                self.changed.clear()
                await self.changed.wait()


_LOGS: dict[int, StderrLog] = {}


def stderr_of(proc: asyncio.subprocess.Process) -> StderrLog:
    return _LOGS[proc.pid]
