"""Reflection v1/v1alpha: a grpcio reflection client and grpcurl list, describe and call."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

import pytest
from conftest import ROOT, running, settings

from platform_services.echo import EchoServer

HERE = Path(__file__).resolve().parent
GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")


async def run_process(*argv: str, timeout: float = 60) -> tuple[int, bytes, bytes]:
    """Run a child to completion; killed (never left running) when it outlives ``timeout``."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=str(ROOT)
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out, err


async def run(*argv: str) -> str:
    code, out, err = await run_process(*argv)
    assert code == 0, err.decode()
    return out.decode()


needs_grpcurl = pytest.mark.skipif(not Path(GRPCURL).exists(), reason="grpcurl not installed")


async def test_grpcio_reflection_client_lists_describes_and_calls() -> None:
    server = EchoServer(settings(GRPC_SERVER_ENABLE_REFLECTION=True))
    async with running(server):
        out = json.loads(
            await run(
                sys.executable,
                str(HERE / "grpcio_reflection_client.py"),
                f"127.0.0.1:{server.port}",
                "/echo.v1.EchoService/Echo",
                '{"message": "via reflection"}',
            )
        )
    assert out["services"] == [
        "echo.v1.EchoService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ]
    assert out["methods"]["echo.v1.EchoService"]["Collect"] == [
        "echo.v1.EchoRequest",
        "echo.v1.EchoResponse",
    ]
    assert out["methods"]["grpc.health.v1.Health"] == {
        "Check": ["grpc.health.v1.HealthCheckRequest", "grpc.health.v1.HealthCheckResponse"],
        "Watch": ["grpc.health.v1.HealthCheckRequest", "grpc.health.v1.HealthCheckResponse"],
    }
    assert out["health"] == {"status": "SERVING"}
    assert out["call"] == {"message": "via reflection"}


@needs_grpcurl
async def test_grpcurl_list_describe_call() -> None:
    server = EchoServer(settings(GRPC_SERVER_ENABLE_REFLECTION=True))
    async with running(server):
        target = f"127.0.0.1:{server.port}"
        listed = (await run(GRPCURL, "-plaintext", target, "list")).split()
        assert "echo.v1.EchoService" in listed and "grpc.health.v1.Health" in listed
        described = await run(GRPCURL, "-plaintext", target, "describe", "echo.v1.EchoRequest")
        assert "double sleep_seconds = 2;" in described
        reply = json.loads(
            await run(
                GRPCURL,
                "-plaintext",
                "-d",
                '{"message": "hi", "payload": "AAEC"}',
                target,
                "echo.v1.EchoService/Echo",
            )
        )
        assert reply == {"message": "hi", "payloadSize": 3}


@needs_grpcurl
async def test_reflection_off_by_default() -> None:
    server = EchoServer(settings())
    async with running(server):
        code, _, err = await run_process(
            GRPCURL, "-plaintext", f"127.0.0.1:{server.port}", "list", timeout=30
        )
        assert code != 0
        assert b"does not support the reflection API" in err
