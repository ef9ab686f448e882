"""Helpers for tests of services built on grpcstack (pytest-asyncio or plain asyncio)::

    async def test_get_item():
        async with serve(ShopServer, GRPC_CACHE_ENABLED=False) as server:
            async with channel(server, metadata={"user-id": "alice"}) as ch:
                reply = await ShopServiceStub(ch).get_item(GetItemRequest(id="1"))

Hermetic by default: a server given as a class gets settings from its class defaults and the
keyword overrides only (no ``.env``, no environment), on 127.0.0.1, an ephemeral port and no
/metrics exporter, so a developer's running dev server or custom values never reach the tests.
``call_context()`` runs a handler without a server, with the metadata, user id and deadline a
served call would have.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar

from grpclib.client import Channel
from grpclib.const import Cardinality
from grpclib.encoding.proto import ProtoStatusDetailsCodec
from grpclib.events import SendRequest, listen
from grpclib.metadata import Deadline
from multidict import MultiDict

from .codec import StackCodec
from .context import CallContext, _current
from .server import AsyncBaseServer
from .settings import ServerSettings, check_keywords, known_names

S = TypeVar("S", bound=AsyncBaseServer)
T = TypeVar("T", bound=ServerSettings)

#: what hermetic settings change from the class defaults
HERMETIC_DEFAULTS: dict[str, Any] = {
    "GRPC_SERVER_HOST": "127.0.0.1",
    "GRPC_SERVER_PORT": 0,
    "GRPC_METRICS_PORT": 0,
}


def make_settings(settings_class: type[T] = ServerSettings, **overrides: Any) -> T:  # type: ignore[assignment]
    """Settings from the class defaults and ``overrides`` only: no .env, no environment.

    Loopback, port 0 and no exporter unless overridden. Unknown names raise SettingsError.
    """
    check_keywords(settings_class, overrides)
    fields = known_names(settings_class)
    values = dict(HERMETIC_DEFAULTS)
    values.update({fields[key.upper()]: value for key, value in overrides.items()})
    return _hermetic(settings_class)(**values)  # type: ignore[return-value]


@functools.cache
def _hermetic(settings_class: type[ServerSettings]) -> type[ServerSettings]:
    """A subclass of ``settings_class`` whose only source is its keyword arguments."""

    def sources(cls: Any, settings_cls: Any, init_settings: Any, **_: Any) -> tuple[Any, ...]:
        return (init_settings,)

    return type(
        settings_class.__name__,
        (settings_class,),
        {
            "__module__": settings_class.__module__,
            "__qualname__": settings_class.__qualname__,
            "hermetic": True,
            "settings_customise_sources": classmethod(sources),
        },
    )


def bound_socket(host: str = "127.0.0.1") -> socket.socket:
    """A bound socket on an ephemeral port. IPPROTO_TCP matters: without it asyncio skips
    TCP_NODELAY and every sequential call waits ~40 ms for a delayed ACK."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    return sock


@asynccontextmanager
async def serve(
    server: S | type[S],
    *,
    settings: ServerSettings | None = None,
    grace: float = 1.0,
    **overrides: Any,
) -> AsyncIterator[S]:
    """Start a server on 127.0.0.1 and an ephemeral port (and its Connect / gRPC-Web listener on
    another when GRPC_HTTP_PORT is set: ``server.http_port``); always stop it.

    ``serve(MyServer, GRPC_ENABLE_AUTH=False)``: hermetic settings (``make_settings``) of
    ``MyServer.settings_class`` with these overrides; ``settings=`` passes them explicitly.
    ``serve(MyServer(my_settings))``: an instance is served with its own settings as they are.
    """
    if isinstance(server, type):
        if settings is not None and overrides:
            raise TypeError("pass settings= or setting overrides, not both")
        if settings is None:
            settings = make_settings(server.settings_class, **overrides)
        instance = server(settings)
    else:
        if settings is not None or overrides:
            raise TypeError(
                "settings apply when serving a class: serve(MyServer, ...); "
                "an instance is served with the settings it was built with"
            )
        instance = server
    http_sock = bound_socket() if instance.settings.GRPC_HTTP_PORT is not None else None
    await instance.start(sock=bound_socket(), http_sock=http_sock)
    try:
        yield instance
    finally:
        if instance.grpc_server is not None:
            await instance.stop(grace)


def make_channel(
    host: str, port: int, *, metadata: Mapping[str, str | bytes] | None = None, **kwargs: Any
) -> Channel:
    """A grpclib Channel with the stack's codec (and rich error details kept).

    ``metadata`` is sent with every call (a call's own metadata wins for the same key).
    """
    ch = Channel(
        host, port, codec=StackCodec(), status_details_codec=ProtoStatusDetailsCodec(), **kwargs
    )
    if metadata:
        defaults = dict(metadata)

        async def add_defaults(event: SendRequest) -> None:
            for key, value in defaults.items():
                if key not in event.metadata:
                    event.metadata[key] = value

        listen(ch, SendRequest, add_defaults)
    return ch


@asynccontextmanager
async def channel(
    server: AsyncBaseServer, *, metadata: Mapping[str, str | bytes] | None = None
) -> AsyncIterator[Channel]:
    """A channel to a served ``server``, closed afterwards; ``metadata`` goes with every call."""
    assert server.port is not None, "start the server first"
    ch = make_channel("127.0.0.1", server.port, metadata=metadata)
    try:
        yield ch
    finally:
        ch.close()


@contextmanager
def call_context(
    method: str = "/test.v1.TestService/Call",
    *,
    metadata: Mapping[str, str | bytes] | None = None,
    user_id: str | None = None,
    correlation_id: str | None = None,
    timeout: float | None = None,
    cardinality: Cardinality = Cardinality.UNARY_UNARY,
) -> Iterator[CallContext]:
    """Run handler code as if it served a call, without a server::

        with call_context(metadata={"x-tenant": "acme"}, user_id="alice", timeout=2) as call:
            reply = await ShopService(...).get_item(GetItemRequest(id="1"))
        assert call.response_trailing_metadata == [("x-stock-source", "cache")]

    ``current_call()``, ``current_user_id()``, ``time_remaining()`` and the response metadata
    functions work inside; what the handler added is on the yielded context.
    """
    deadline = Deadline.from_timeout(timeout) if timeout is not None else None
    call = CallContext(method, cardinality, MultiDict(metadata or {}), None, deadline)
    call.user_id = user_id
    call.correlation_id = correlation_id
    token = _current.set(call)
    try:
        yield call
    finally:
        _current.reset(token)
