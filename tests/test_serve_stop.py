"""`grpcstack serve` stops through the public stop(): a subclass override runs on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from cli_process import start_cli
from conftest import ROOT

SERVER = '''
from pathlib import Path

from platform_services.echo import EchoServer


class StoppingServer(EchoServer):
    async def stop(self, grace_period=None):
        Path("stopped-by").write_text("subclass stop()")
        await super().stop(grace_period)
'''


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
