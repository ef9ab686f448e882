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
    argv = [python, "-m", "grpcstack.cli", "serve", target, "--port", "0", *extra]
    return await start_command(
        argv, env=full, cwd=cwd or str(ROOT / "tests"), startup_timeout=startup_timeout
    )


async def start_command(
    argv: list[str], *, env: dict[str, str], cwd: str, startup_timeout: float = 30
) -> tuple[asyncio.subprocess.Process, int]:
    """Start a command that serves and logs "on port N"; return it and the port."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stderr=asyncio.subprocess.PIPE, env=env, cwd=cwd
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
                    return proc, int(found.group(1))
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
