"""`grpcstack serve` in a real subprocess: SIGTERM drains and exits 0 with idle clients connected,
on every supported Python (grpclib's wait_closed() hangs on >= 3.12 without the stack's stop)."""

from __future__ import annotations

import asyncio
import signal

import grpc
import provision
import pytest
from cli_process import start_cli, stderr_of
from conftest import unprovisioned
from grpclib.client import Channel
from grpclib.const import Cardinality
from grpclib.exceptions import GRPCError, StreamTerminatedError

from gen.echo.v1 import EchoRequest, EchoResponse, EchoServiceStub


@pytest.mark.tools("pythons")  # venvs with the runtime deps: tests/provision.py
@pytest.mark.parametrize("version", provision.PYTHONS)
async def test_sigterm_with_idle_clients_exits_zero(version: str) -> None:
    if provision.find_python(version) is None:
        pytest.skip(f"python{version} is not installed")
    python = provision.python_with_runtime(version, install=False)
    if python is None:
        pytest.fail(unprovisioned("pythons"))
    proc, port = await start_cli(
        "platform_services.echo:EchoServer", "--reload-free", python=python
    )
    try:
        grpclib_channel = Channel("127.0.0.1", port)
        reply = await EchoServiceStub(grpclib_channel).echo(EchoRequest(message="idle"))
        assert reply.message == "idle"
        grpcio_channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        await grpcio_channel.unary_unary("/echo.v1.EchoService/Echo")(b"", timeout=5)
        # both connections now sit idle while the server is told to stop
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 15)
        assert code == 0
        grpclib_channel.close()
        await grpcio_channel.close()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_second_signal_exits_at_once() -> None:
    proc, port = await start_cli()
    try:
        # a Chat call the client never ends: once its first reply is back the server holds it,
        # and the drain (the default grace is 10 s) waits for it
        ch = Channel("127.0.0.1", port)
        async with ch.request(
            "/echo.v1.EchoService/Chat", Cardinality.STREAM_STREAM, EchoRequest, EchoResponse
        ) as chat:
            await chat.send_message(EchoRequest(message="held"))
            assert (await chat.recv_message()).message == "held"
            proc.send_signal(signal.SIGTERM)
            await stderr_of(proc).wait_for("stopping gracefully")
            assert proc.returncode is None  # draining, waiting for the call
            proc.send_signal(signal.SIGINT)
            code = await asyncio.wait_for(proc.wait(), 10)
            assert code == 1
            with pytest.raises((GRPCError, StreamTerminatedError, ConnectionError)):
                await asyncio.wait_for(chat.recv_message(), 10)
        ch.close()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
