"""Helpers for the client tests: settings without the environment, an echo server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from conftest import running, settings

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
