"""The Client's cached HPACK request prefix: every call reaches the method it names, however
calls of different methods interleave on one connection (the server decodes :path)."""

from __future__ import annotations

from typing import Any

from client_helpers import client_settings
from conftest import running, settings

from gen.echo.v1 import EchoRequest, EchoServiceStub
from grpcstack.client import Client
from grpcstack.middleware import Middleware
from platform_services.echo import EchoServer


class PathRecorder(EchoServer):
    def middlewares(self) -> list[Any]:
        self.paths: list[str] = []
        paths = self.paths

        class Record(Middleware):
            def on_request(self, event: Any, call: Any) -> None:
                paths.append(call.method)

        return [*super().middlewares(), Record()]


async def test_interleaved_methods_reach_the_method_they_name() -> None:
    server = PathRecorder(settings(GRPC_ENABLE_RATE_LIMITING=False))
    async with (
        running(server),
        Client(f"127.0.0.1:{server.port}", settings=client_settings()) as client,
    ):
        echo = client.stub(EchoServiceStub)
        sent: list[str] = []
        # each method's first call adds its :path to the HPACK table; later ones reuse it
        for kind in ["echo", "expand", "echo", "echo", "collect", "expand", "echo", "collect"]:
            if kind == "echo":
                reply = await echo.echo(EchoRequest(message="e"), timeout=10)
                assert (reply.message, reply.index) == ("e", 0)
            elif kind == "expand":
                replies = [r async for r in echo.expand(EchoRequest(message="x", count=2))]
                assert [r.index for r in replies] == [0, 1]
            else:
                reply = await echo.collect([EchoRequest(message="a"), EchoRequest(message="b")])
                assert (reply.message, reply.index) == ("a,b", 2)
            sent.append(f"/echo.v1.EchoService/{kind.capitalize()}")
    assert server.paths == sent
