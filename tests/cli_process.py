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
    startup_timeout: float = 30,
) -> tuple[asyncio.subprocess.Process, int]:
    """Start ``python -m grpcstack.cli serve TARGET --port 0``; return it and its port."""
    full = dict(os.environ, PYTHONPATH=PYTHONPATH, GRPC_ENABLE_AUTH="false")
    full.pop("GRPC_SERVER_PORT", None)
    full.update(env or {})
    proc = await asyncio.create_subprocess_exec(
        python,
        "-m",
        "grpcstack.cli",
        "serve",
        target,
        "--port",
        "0",
        *extra,
        stderr=asyncio.subprocess.PIPE,
        env=full,
        cwd=cwd or str(ROOT / "tests"),
    )
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(startup_timeout):
            while True:
                line = (await proc.stderr.readline()).decode()
                assert line, "the server exited before serving"
                if found := re.search(r"on port (\d+)", line):
                    return proc, int(found.group(1))
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
