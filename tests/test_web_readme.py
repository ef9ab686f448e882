"""The README's Connect section runs as written: its bash block (grpcurl, curl POST and GET,
buf curl over gRPC-Web) against the README's custom service served by the CLI with
GRPC_HTTP_PORT set, the block's fixed ports replaced by the ones bound."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path

import provision
import pytest
from cli_process import start_cli, stderr_of
from conftest import ROOT, unprovisioned
from test_readme import readme_example


def readme_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Connect, HTTP/JSON and gRPC-Web", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block
    return block.group(1)


def commands(block: str) -> list[str]:
    joined = block.replace("\\\n", " ")
    return [line.split("  #", 1)[0].strip() for line in joined.splitlines() if line.strip()]


@pytest.mark.tools("node-connect")  # buf, from tests/provision.py
async def test_readme_connect_block(tmp_path: Path) -> None:
    modules = provision.node_modules("node-connect", install=False)
    if modules is None and provision.node_available():
        pytest.fail(unprovisioned("node-connect"))
    (tmp_path / "my_server.py").write_text(readme_example())
    proc, port = await start_cli(
        "my_server:EchoServer",
        cwd=str(tmp_path),
        env={
            "GRPC_ENABLE_AUTH": "true",
            "GRPC_HTTP_PORT": "0",
            "GRPC_SERVER_HOST": "127.0.0.1",
            "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
        },
    )
    try:
        line = await stderr_of(proc).wait_for("Connect and gRPC-Web on port", timeout=30)
        found = re.search(r"Connect and gRPC-Web on port (\d+)", line)
        assert found, line
        http_port = found.group(1)
        bin_dirs = [str(modules / ".bin")] if modules else []
        cmds = commands(readme_block())
        assert len(cmds) == 4
        for cmd in cmds:
            if cmd.startswith("buf ") and modules is None:
                continue  # no node/npm on this machine: no buf; the other three still run
            cmd = cmd.replace("127.0.0.1:50061", f"127.0.0.1:{port}").replace(
                "127.0.0.1:8080", f"127.0.0.1:{http_port}"
            )
            run = await asyncio.create_subprocess_shell(
                cmd,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=str(ROOT),
                env=dict(os.environ, PATH=os.pathsep.join([*bin_dirs, os.environ["PATH"]])),
            )
            try:
                out, err = await asyncio.wait_for(run.communicate(), 60)
            finally:
                if run.returncode is None:
                    run.kill()
                    await run.wait()
            assert run.returncode == 0, (cmd, err.decode())
            assert b'"HI"' in out, (cmd, out)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 30)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
