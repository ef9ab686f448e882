"""Independent non-Python clients against the HTTP listener: Connect-ES (@connectrpc/connect-web's
gRPC-Web transport on fetch, @connectrpc/connect-node's Connect transport over HTTP/1.1 and h2c)
and ``buf curl`` (Connect, gRPC-Web, and gRPC on the gRPC port) with ``--schema protos``: unary,
server streaming, and through the chain UNAUTHENTICATED, RESOURCE_EXHAUSTED with RetryInfo,
INVALID_ARGUMENT (a bad JSON value named by field, from a client on an older schema), deadlines
and oversized requests. The npm packages come from tests/provision.py (a cache outside the
repository; skipped without node/npm)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import provision
import pytest
from conftest import ROOT, unprovisioned
from web_helpers import handled, web_server

pytestmark = pytest.mark.tools("node-connect")


def node_modules() -> Path:
    if not provision.node_available():
        pytest.skip("node and npm are not installed")
    modules = provision.node_modules("node-connect", install=False)
    if modules is None:
        pytest.fail(unprovisioned("node-connect"))
    return modules


@pytest.fixture(scope="module")
def descriptor_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("fds") / "echo.binpb"
    rc = protoc.main(
        [
            "protoc",
            f"-I{ROOT / 'protos'}",
            "--include_imports",
            f"--descriptor_set_out={out}",
            "echo.proto",
        ]
    )
    assert rc == 0
    return out


async def run(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        if proc.returncode is None:  # outlived its bound: never leave it running
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_connect_es_clients(descriptor_set: Path) -> None:
    modules = node_modules()
    async with web_server(
        GRPC_RATE_LIMIT_MAX_REQUESTS=1000, GRPC_MAX_MESSAGE_LENGTH=4096
    ) as server:
        code, out, err = await run(
            "node",
            str(ROOT / "tests" / "node_web_client.js"),
            str(descriptor_set),
            str(server.http_port),
            env={"NODE_PATH": str(modules), "PATH": "/usr/bin:/bin"},
        )
        assert code == 0, err
        results: dict[str, dict[str, Any]] = json.loads(out)
        assert len(results) == 4
        bad_json = results.pop("connect json (node, http/1.1), older schema")["bad_json"]
        assert "Failed to parse count field" in bad_json["message"]
        for name, cases in results.items():
            assert "crashed" not in cases, (name, cases)
            for case, outcome in cases.items():
                ok = outcome is True or (isinstance(outcome, dict) and outcome.get("ok"))
                assert ok, (name, case, outcome)
        assert handled(server, "Echo", "OK", "grpc-web") >= 1
        assert handled(server, "Expand", "OK", "grpc-web") == 1
        assert handled(server, "Expand", "OK", "connect") == 2
        assert handled(server, "Echo", "Unauthenticated", "grpc-web") == 1
        for name, cases in results.items():
            assert "larger than max" in cases["oversized"]["message"], name
        assert handled(server, "Echo", "ResourceExhausted", "grpc-web") == 1
        assert handled(server, "Echo", "ResourceExhausted", "connect") == 2
        # failWith=ValueError on both Connect transports, and the older schema's bad JSON
        assert handled(server, "Echo", "InvalidArgument", "connect") == 3
        # the client gives up at the same moment the server's deadline fires: either code
        assert (
            sum(
                handled(server, "Echo", code, "connect")
                for code in ("DeadlineExceeded", "Canceled")
            )
            == 2
        )


async def test_connect_es_rate_limit_retry_info(descriptor_set: Path) -> None:
    modules = node_modules()
    async with web_server(GRPC_RATE_LIMIT_MAX_REQUESTS=1) as server:
        code, out, err = await run(
            "node",
            str(ROOT / "tests" / "node_web_client.js"),
            str(descriptor_set),
            str(server.http_port),
            "ratelimit",
            env={"NODE_PATH": str(modules), "PATH": "/usr/bin:/bin"},
        )
        assert code == 0, err
        for name, cases in json.loads(out).items():
            limited = cases["rate_limited"]
            assert limited["ok"], (name, limited)
            assert "rate limit of 1 requests" in limited["message"]
            assert {"type": "google.rpc.RetryInfo", "size": limited["details"][0]["size"]} in (
                limited["details"]
            )
            assert limited["details"][0]["size"] > 0


def buf(modules: Path) -> str:
    path = modules / ".bin" / "buf"
    assert path.exists(), "@bufbuild/buf is provisioned with the other packages"
    return str(path)


@pytest.mark.parametrize("protocol", ["connect", "grpcweb", "grpc"])
async def test_buf_curl(protocol: str, tmp_path: Path) -> None:
    """Unary, server streaming and the error paths through the chain. (No deadline case: buf
    curl has no timeout option and refuses Connect-Timeout-Ms / Grpc-Timeout as headers.)"""
    modules = node_modules()
    # alice's 6th call is over the limit; a 64 KiB message limit for the oversized one
    async with web_server(GRPC_RATE_LIMIT_MAX_REQUESTS=5, GRPC_MAX_MESSAGE_LENGTH=65536) as server:
        port = server.port if protocol == "grpc" else server.http_port
        extra = ["--http2-prior-knowledge"] if protocol == "grpc" else []
        base = [buf(modules), "curl", "--schema", str(ROOT / "protos"), "--protocol", protocol]
        base += extra
        alice = [*base, "-H", "user-id: alice"]
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(modules.parent),
            "BUF_CACHE_DIR": str(modules.parent / "buf-cache"),
        }
        echo = f"http://127.0.0.1:{port}/echo.v1.EchoService/Echo"
        code, out, err = await run(
            *alice, "-d", '{"message": "buf", "payload": "AAEC"}', echo, env=env
        )
        assert code == 0, err
        assert json.loads(out) == {"message": "buf", "payloadSize": 3}
        code, out, err = await run(
            *alice,
            "-d",
            '{"message": "s", "count": 2}',
            f"http://127.0.0.1:{port}/echo.v1.EchoService/Expand",
            env=env,
        )
        assert code == 0, err
        assert out.count('"message": "s"') == 2

        async def fails(argv: list[str], data: str, code_name: str) -> str:
            """buf curl prints the error as JSON and exits non-zero."""
            rc, out, err = await run(*argv, "-d", data, echo, env=env)
            assert rc != 0, out
            assert f'"code": "{code_name}"' in err + out, err + out
            return err + out

        text = await fails(alice, '{"failWith": "ValueError"}', "invalid_argument")
        assert "failing as asked with ValueError" in text
        text = await fails(base, '{"message": "who"}', "unauthenticated")
        assert 'missing \\"user-id\\" metadata' in text  # JSON-escaped quotes
        big = tmp_path / "big.json"
        big.write_text(json.dumps({"message": "x" * 100_000}))
        text = await fails(alice, f"@{big}", "resource_exhausted")
        assert "larger than max" in text
        code, out, err = await run(*alice, "-d", "{}", echo, env=env)  # the 5th: still OK
        assert code == 0, err
        text = await fails(alice, "{}", "resource_exhausted")
        assert "rate limit of 5 requests" in text
        assert "google.rpc.RetryInfo" in text
        label = {"connect": "connect", "grpcweb": "grpc-web", "grpc": "grpc"}[protocol]
        assert handled(server, "Echo", "OK", label) == 2
        assert handled(server, "Expand", "OK", label) == 1
        assert handled(server, "Echo", "InvalidArgument", label) == 1
        assert handled(server, "Echo", "Unauthenticated", label) == 1
        assert handled(server, "Echo", "ResourceExhausted", label) == 2
