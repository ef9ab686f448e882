"""The README's custom-service example runs exactly as written."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path

from cli_process import start_cli
from conftest import ROOT
from grpclib.client import Channel

from gen.echo.v1 import EchoRequest, EchoServiceStub


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## A custom service in 15 lines", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code
    return code.group(1)


def test_example_is_short() -> None:
    lines = [line for line in readme_example().splitlines() if line.strip()]
    assert len(lines) <= 15


async def test_example_serves_and_stops(tmp_path: Path) -> None:
    (tmp_path / "my_server.py").write_text(readme_example())
    proc, port = await start_cli(
        "my_server:EchoServer",
        cwd=str(tmp_path),
        env={"GRPC_ENABLE_AUTH": "true", "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])},
    )
    try:
        ch = Channel("127.0.0.1", port)
        reply = await EchoServiceStub(ch).echo(
            EchoRequest(message="hi"), metadata={"user-id": "demo"}
        )
        assert reply.message == "HI"
        ch.close()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_custom_middleware_example_rejects_without_tenant() -> None:
    from conftest import running, settings
    from grpclib.const import Status
    from grpclib.exceptions import GRPCError

    from platform_services.echo import EchoService

    text = (ROOT / "README.md").read_text().split("### Your own middleware", 1)[1]
    code = re.search(r"```python\n(.*?)```", text, re.S)
    assert code
    namespace: dict[str, object] = {}
    exec(code.group(1).replace("billing.v1.Billing", "echo.v1.EchoService"), namespace)

    class Billing(namespace["BillingServer"]):  # type: ignore[misc,valid-type]
        def services(self) -> list[object]:
            return [EchoService()]

    server = Billing(settings())
    async with running(server):
        ch = Channel("127.0.0.1", server.port)
        try:
            stub = EchoServiceStub(ch)
            try:
                await stub.echo(EchoRequest())
            except GRPCError as err:
                assert err.status is Status.FAILED_PRECONDITION
                assert err.message == "x-tenant metadata is required"
            else:
                raise AssertionError("the middleware did not reject")
            ok = await stub.echo(EchoRequest(message="t"), metadata={"x-tenant": "acme"})
            assert ok.message == "t"
        finally:
            ch.close()
