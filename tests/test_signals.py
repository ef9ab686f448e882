"""`grpcstack serve` in a real subprocess: SIGTERM drains and exits 0 with idle clients connected,
on every supported Python (grpclib's wait_closed() hangs on >= 3.12 without the stack's stop)."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from cli_process import start_cli
from conftest import ROOT
from grpclib.client import Channel

from gen.echo.v1 import EchoRequest, EchoServiceStub

RUNTIME_DEPS = [
    "grpclib==0.4.9",
    "betterproto2[grpclib,protobuf]==0.10.*",
    "pydantic-settings",
    "prometheus-client",
    "googleapis-common-protos",
    "aiocache==0.12.*",
]
VENVS = ROOT / ".cache" / "venvs"


def interpreter(version: str) -> str:
    """A Python of ``version`` with grpcstack's runtime deps, or skip when none is installed."""
    if version == f"{sys.version_info.major}.{sys.version_info.minor}":
        return sys.executable
    base = find_python(version)
    if base is None:
        pytest.skip(f"python{version} is not installed")
    venv = VENVS / version
    python = venv / "bin" / "python"
    marker = venv / ".ready"
    wanted = "\n".join(RUNTIME_DEPS)
    if not marker.exists() or marker.read_text() != wanted:
        subprocess.run([base, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *RUNTIME_DEPS], check=True, timeout=600
        )
        marker.write_text(wanted)
    return str(python)


def find_python(version: str) -> str | None:
    """python{version} on PATH (pyenv shims included) or under ~/.pyenv, if it really runs."""
    candidates = [shutil.which(f"python{version}")]
    candidates += sorted(
        str(p) for p in Path.home().glob(f".pyenv/versions/{version}*/bin/python{version}")
    )
    for candidate in filter(None, candidates):
        ok = subprocess.run([candidate, "-c", "import venv"], capture_output=True).returncode == 0
        if ok:
            return candidate
    return None


@pytest.mark.parametrize("version", ["3.11", "3.12", "3.13"])
async def test_sigterm_with_idle_clients_exits_zero(version: str) -> None:
    python = await asyncio.to_thread(interpreter, version)
    proc, port = await start_cli(
        "platform_services.echo:EchoServer", "--reload-free", python=python
    )
    try:
        grpclib_channel = Channel("127.0.0.1", port)
        reply = await EchoServiceStub(grpclib_channel).echo(EchoRequest(message="idle"))
        assert reply.message == "idle"
        grpcio_channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        await grpcio_channel.unary_unary("/echo.v1.EchoService/Echo")(b"", timeout=5)
        # both connections now sit idle while the server is told to stop
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 15)
        assert code == 0
        grpclib_channel.close()
        await grpcio_channel.close()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_second_signal_exits_at_once() -> None:
    proc, port = await start_cli()
    try:
        env_grace = 60  # the default grace is 10 s; the in-flight call sleeps longer
        ch = Channel("127.0.0.1", port)
        call = asyncio.create_task(
            EchoServiceStub(ch).echo(EchoRequest(sleep_seconds=env_grace), timeout=30)
        )
        await asyncio.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        assert proc.returncode is None  # draining, waiting for the call
        proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), 5)
        assert code == 1
        call.cancel()
        ch.close()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_venv_cache_is_ignored_by_git() -> None:
    ignored = Path(ROOT / ".gitignore").read_text()
    assert "/.cache/" in ignored
