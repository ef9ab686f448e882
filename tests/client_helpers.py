"""Helpers for the client tests: settings without the environment, an echo server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from conftest import running, settings

from grpcstack.middleware import Middleware
from grpcstack.settings import ClientSettings
from platform_services.echo import EchoServer


def client_settings(**overrides: Any) -> ClientSettings:
    return ClientSettings(_env_file=None, **overrides)  # type: ignore[call-arg]


@asynccontextmanager
async def echo_server(**overrides: Any) -> AsyncIterator[EchoServer]:
    """EchoServer with the default chain minus rate limiting (tests make many calls)."""
    base: dict[str, Any] = {"GRPC_ENABLE_RATE_LIMITING": False}
    base.update(overrides)
    async with running(EchoServer(settings(**base))) as server:
        yield server


class MetadataRecorder(EchoServer):
    """EchoServer whose chain records every request's metadata and deadline."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: (metadata, remaining seconds, correlation id) per call
        self.seen: list[tuple[dict[str, Any], float | None, str | None]] = []

    def middlewares(self) -> list[Any]:
        seen = self.seen

        class Record(Middleware):
            def on_request(self, event: Any, call: Any) -> None:
                seen.append((dict(event.metadata), call.time_remaining(), call.correlation_id))

        return [*super().middlewares(), Record()]
