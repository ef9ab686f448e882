"""Interop cases with Node's @grpc/grpc-js: a third HTTP/2 + gRPC stack, independent of Python's.
The npm packages are installed once into .cache/node (skipped when node/npm are missing)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess

import pytest
from conftest import ROOT, running

from platform_services.interop import InteropServer, InteropSettings

NODE_DIR = ROOT / ".cache" / "node"
PACKAGES = ["@grpc/grpc-js@1", "@grpc/proto-loader@0.7"]


def node_modules() -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed")
    marker = NODE_DIR / ".ready"
    if marker.exists() and marker.read_text() == " ".join(PACKAGES):
        return
    NODE_DIR.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "npm",
            "install",
            "--silent",
            "--no-audit",
            "--no-fund",
            "--prefix",
            str(NODE_DIR),
            *PACKAGES,
        ],
        check=True,
        timeout=600,
    )
    marker.write_text(" ".join(PACKAGES))


async def test_grpc_js_interop_cases() -> None:
    await asyncio.to_thread(node_modules)
    server = InteropServer(
        InteropSettings(_env_file=None, GRPC_SERVER_HOST="127.0.0.1", GRPC_SERVER_PORT=0)
    )
    async with running(server):
        proc = await asyncio.create_subprocess_exec(
            "node",
            str(ROOT / "tests" / "node_interop_client.js"),
            str(ROOT / "protos"),
            str(server.port),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={"NODE_PATH": str(NODE_DIR / "node_modules"), "PATH": "/usr/bin:/bin"},
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    results = json.loads(out)
    failed = [case for case, ok in results.items() if ok is not True]
    assert not failed, results
    assert len(results) == 10
