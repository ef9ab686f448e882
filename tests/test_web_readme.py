"""The README's Connect section runs as written: its bash block (grpcurl, curl POST and GET,
buf curl over gRPC-Web) against the README's custom service served by the CLI with
GRPC_HTTP_PORT set, the block's fixed ports replaced by the ones bound."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path

from cli_process import start_cli
from conftest import ROOT
from test_readme import readme_example

NODE_BIN = ROOT / ".cache" / "node-connect" / "node_modules" / ".bin"


def readme_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Connect, HTTP/JSON and gRPC-Web", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block
    return block.group(1)


def commands(block: str) -> list[str]:
    joined = block.replace("\\\n", " ")
    return [line.split("  #", 1)[0].strip() for line in joined.splitlines() if line.strip()]


async def test_readme_connect_block(tmp_path: Path) -> None:
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
        assert proc.stderr is not None
        async with asyncio.timeout(30):
            while not (
                found := re.search(
                    r"Connect and gRPC-Web on port (\d+)", (await proc.stderr.readline()).decode()
                )
            ):
                pass
        http_port = found.group(1)
        cmds = commands(readme_block())
        assert len(cmds) == 4
        for cmd in cmds:
            if cmd.startswith("buf ") and not (NODE_BIN / "buf").exists():
                continue  # installed by tests/test_web_node_clients.py when node is present
            cmd = cmd.replace("127.0.0.1:50061", f"127.0.0.1:{port}").replace(
                "127.0.0.1:8080", f"127.0.0.1:{http_port}"
            )
            run = await asyncio.create_subprocess_shell(
                cmd,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=str(ROOT),
                env=dict(os.environ, PATH=f"{NODE_BIN}:{os.environ['PATH']}"),
            )
            out, err = await asyncio.wait_for(run.communicate(), 60)
            assert run.returncode == 0, (cmd, err.decode())
            assert b'"HI"' in out, (cmd, out)
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
