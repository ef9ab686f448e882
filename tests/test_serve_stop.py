"""`grpcstack serve` stops through the public stop(): a subclass override runs on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from cli_process import start_cli
from conftest import ROOT

SERVER = """
from pathlib import Path

from platform_services.echo import EchoServer


class StoppingServer(EchoServer):
    async def stop(self, grace_period=None):
        Path("stopped-by").write_text("subclass stop()")
        await super().stop(grace_period)
"""


async def test_sigterm_runs_a_subclass_stop(tmp_path: Path) -> None:
    (tmp_path / "stopping_server.py").write_text(SERVER)
    proc, _ = await start_cli(
        "stopping_server:StoppingServer",
        cwd=str(tmp_path),
        env={"PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT / "src"), str(ROOT)])},
    )
    try:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(60):
            assert proc.stderr is not None
            await proc.stderr.read()
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert (tmp_path / "stopped-by").read_text() == "subclass stop()"


SLOW_START = """
import asyncio
from pathlib import Path

from platform_services.echo import EchoServer


class SlowStart(EchoServer):
    async def before_start(self):
        Path("starting").write_text("")
        while not Path("go").exists():  # the test says when start may go on
            await asyncio.sleep(0.01)

    async def stop(self, grace_period=None):
        Path("stopped-by").write_text("subclass stop()")
        await super().stop(grace_period)
"""


async def test_sigterm_while_starting_drains_once_started(tmp_path: Path) -> None:
    (tmp_path / "slow_start.py").write_text(SLOW_START)
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT / "src"), str(ROOT)]),
        GRPC_ENABLE_AUTH="false",
    )
    env.pop("GRPC_SERVER_PORT", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "grpcstack.cli",
        "serve",
        "slow_start:SlowStart",
        "--port",
        "0",
        cwd=str(tmp_path),
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(60):
            while not (tmp_path / "starting").exists():
                await asyncio.sleep(0.01)
            proc.send_signal(signal.SIGTERM)  # before_start is running: the handler is there
            while b"stopping gracefully" not in await proc.stderr.readline():
                pass  # the handler ran while the server was still starting
            (tmp_path / "go").write_text("")
            await proc.stderr.read()
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert (tmp_path / "stopped-by").read_text() == "subclass stop()"
