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


async def run(*argv: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=str(ROOT)
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


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


@pytest.mark.skipif(not Path(GRPCURL).exists(), reason="grpcurl not installed")
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


async def test_reflection_off_by_default() -> None:
    server = EchoServer(settings())
    async with running(server):
        proc = await asyncio.create_subprocess_exec(
            GRPCURL,
            "-plaintext",
            f"127.0.0.1:{server.port}",
            "list",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode != 0
        assert b"does not support the reflection API" in err
