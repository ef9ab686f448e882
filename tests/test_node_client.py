"""Interop cases with Node's @grpc/grpc-js: a third HTTP/2 + gRPC stack, independent of Python's.
The npm packages come from tests/provision.py (a cache outside the repository; skipped when node or
npm are missing). The client reports what it saw; the server's own counts are checked here."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import provision
import pytest
import pytest_asyncio
from conftest import ROOT, running, unprovisioned
from server_metrics import delta, handled, in_flight
from waiting import eventually

from platform_services.interop import InteropServer, InteropSettings

SERVICE = "grpc.testing.TestService"
#: what the server must count for the client's cases (see node_interop_client.js)
SERVER_COUNTS = {
    ("EmptyCall", "OK"): 1,  # empty_unary
    # large_unary, client_compressed_unary, server_compressed_unary, custom_metadata
    ("UnaryCall", "OK"): 4,
    ("UnaryCall", "InvalidArgument"): 1,  # the compression probe
    ("UnaryCall", "Unknown"): 1,  # special_status_message
    ("StreamingOutputCall", "OK"): 1,  # server_streaming
    ("FullDuplexCall", "DeadlineExceeded"): 1,  # timeout_on_sleeping_server
}


@pytest.fixture(scope="session")
def node_modules() -> Path:
    if not provision.node_available():
        pytest.skip("node and npm are not installed")
    modules = provision.node_modules("node", install=False)
    if modules is None:
        pytest.fail(unprovisioned("node"))
    return modules


@dataclass
class NodeRun:
    results: dict[str, bool]
    counted: dict[tuple[str, str], int]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def node_run(node_modules: Path) -> NodeRun:
    """One run of the Node client against a fresh interop server: what the client reported and
    what the server counted."""
    node = shutil.which("node")
    assert node is not None
    server = InteropServer(
        InteropSettings(_env_file=None, GRPC_SERVER_HOST="127.0.0.1", GRPC_SERVER_PORT=0)
    )
    async with running(server):
        before = handled(server, SERVICE)
        proc = await asyncio.create_subprocess_exec(
            node,
            str(ROOT / "tests" / "node_interop_client.js"),
            str(ROOT / "protos"),
            str(server.port),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={"NODE_PATH": str(node_modules), "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 60)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 0, err.decode()
        # every call has ended on the server (the client exited): the counts are final
        await eventually(lambda: in_flight(server, SERVICE) == 0)
        return NodeRun(json.loads(out), delta(handled(server, SERVICE), before))


pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.tools("node")]


async def test_grpc_js_interop_cases(node_run: NodeRun) -> None:
    failed = [case for case, ok in node_run.results.items() if ok is not True]
    assert not failed, node_run.results
    assert len(node_run.results) == 10
    others = {k: v for k, v in node_run.counted.items() if k[0] != "FullDuplexCall"}
    assert others == {k: v for k, v in SERVER_COUNTS.items() if k[0] != "FullDuplexCall"}


async def test_grpc_js_timeout_is_deadline_exceeded_on_the_server(node_run: NodeRun) -> None:
    counted = {k: v for k, v in node_run.counted.items() if k[0] == "FullDuplexCall"}
    assert counted == {("FullDuplexCall", "DeadlineExceeded"): 1}
