"""`grpcstack` command line: help and clear errors for bad targets and settings."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT


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
