"""`grpcstack` command line: help and clear errors for bad targets and settings."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cli_process import PYTHONPATH, start_cli, start_command, stderr_of
from conftest import ROOT
from grpclib.client import Channel

from gen.echo.v1 import EchoRequest, EchoServiceStub


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    full_env = dict(os.environ, PYTHONPATH=f"{ROOT / 'tests'}")
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "grpcstack.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=full_env,
        cwd=str(ROOT / "tests"),
    )


def test_help_documents_serve() -> None:
    out = cli("--help")
    assert out.returncode == 0
    assert "serve" in out.stdout
    serve = cli("serve", "--help")
    assert serve.returncode == 0
    for flag in ("--port", "--reload-free", "package.module:ServerClass"):
        assert flag in serve.stdout


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_colon_here", "must look like 'package.module:ServerClass'"),
        ("no_such_module_xyz:Server", "cannot import module 'no_such_module_xyz'"),
        ("platform_services.echo:Missing", "has no attribute 'Missing'"),
        ("platform_services.echo:EchoService", "is not an AsyncBaseServer subclass"),
    ],
)
def test_bad_targets(target: str, message: str) -> None:
    out = cli("serve", target)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_bad_setting_names_the_variable() -> None:
    out = cli(
        "serve", "platform_services.echo:EchoServer", env={"GRPC_MAX_CONCURRENT_STREAMS": "-1"}
    )
    assert out.returncode == 2
    assert "invalid setting GRPC_MAX_CONCURRENT_STREAMS" in out.stderr


def test_bad_port() -> None:
    out = cli("serve", "platform_services.echo:EchoServer", "--port", "99999")
    assert out.returncode == 2
    assert "is not a port number" in out.stderr


def test_port_in_use_is_reported() -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = cli(
            "serve",
            "platform_services.echo:EchoServer",
            "--port",
            str(port),
            env={"GRPC_SERVER_HOST": "127.0.0.1"},
        )
    assert out.returncode == 1
    assert "cannot serve" in out.stderr


GRPCSTACK = str(Path(sys.executable).parent / "grpcstack")
APP = "from platform_services.echo import EchoServer\n\n\nclass Server(EchoServer):\n    pass\n"


async def _serve_and_call(argv: list[str], cwd: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(GRPC_SERVER_HOST="127.0.0.1", GRPC_ENABLE_AUTH="false")
    proc, port = await start_command(argv, env=env, cwd=str(cwd))
    try:
        ch = Channel("127.0.0.1", port)
        try:
            reply = await EchoServiceStub(ch).echo(EchoRequest(message="cwd"))
            assert reply.message == "cwd"
        finally:
            ch.close()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_access_lines_on_stdout_server_logs_on_stderr() -> None:
    """`grpcstack serve`: JSON access lines on stdout, flushed while the server runs (every 50 ms,
    not when the pipe's buffer fills or the process exits); server logs on stderr only."""
    proc, port = await start_cli(stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    try:
        ch = Channel("127.0.0.1", port)
        try:
            await EchoServiceStub(ch).echo(EchoRequest(message="logged"))
        finally:
            ch.close()
        line = await asyncio.wait_for(proc.stdout.readline(), 10)
        assert proc.returncode is None  # it arrived through a flush, not at exit
        access = json.loads(line)
        assert (access["grpc.method"], access["grpc.code"]) == ("Echo", "OK")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        rest = (await proc.stdout.read()).decode().splitlines()
        assert all(json.loads(x)["msg"] == "finished call" for x in rest)  # nothing else on stdout
        err = stderr_of(proc)
        await err.wait_for("stopped")
        assert any("on port" in x for x in err.lines)
        assert not any('"finished call"' in x for x in err.lines)  # no access line on stderr
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_serve_imports_from_the_current_folder(tmp_path: Path) -> None:
    """The console script (not `python -m`, which adds the cwd itself) finds ./app.py."""
    (tmp_path / "app.py").write_text(APP)
    await _serve_and_call([GRPCSTACK, "serve", "app:Server", "--port", "0"], tmp_path)


async def test_serve_app_dir(tmp_path: Path) -> None:
    (tmp_path / "svc").mkdir()
    (tmp_path / "svc" / "app.py").write_text(APP)
    argv = [GRPCSTACK, "serve", "app:Server", "--app-dir", "svc", "--port", "0"]
    await _serve_and_call(argv, tmp_path)


def test_serve_bad_app_dir(tmp_path: Path) -> None:
    out = subprocess.run(
        [GRPCSTACK, "serve", "app:Server", "--app-dir", "missing"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert out.returncode == 2
    assert out.stderr.strip() == "grpcstack: --app-dir 'missing' is not a folder"


LOOP_SERVER = """
import asyncio

from gen.echo.v1 import EchoRequest, EchoResponse
from platform_services.echo import EchoServer, EchoService


class LoopEcho(EchoService):
    async def echo(self, message: EchoRequest) -> EchoResponse:
        return EchoResponse(message=type(asyncio.get_running_loop()).__module__)


class LoopServer(EchoServer):
    def services(self):
        return [LoopEcho()]
"""


@pytest.mark.parametrize("uvloop", ["true", "false"])
async def test_grpc_uvloop_picks_the_event_loop(uvloop: str, tmp_path: Path) -> None:
    if uvloop == "true":
        pytest.importorskip("uvloop")
    (tmp_path / "loop_server.py").write_text(LOOP_SERVER)
    proc, port = await start_cli(
        "loop_server:LoopServer",
        env={"GRPC_UVLOOP": uvloop, "PYTHONPATH": os.pathsep.join([str(tmp_path), PYTHONPATH])},
    )
    try:
        ch = Channel("127.0.0.1", port)
        try:
            reply = await EchoServiceStub(ch).echo(EchoRequest())
        finally:
            ch.close()
        assert reply.message.split(".")[0] == ("uvloop" if uvloop == "true" else "asyncio")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
