"""Targets: one HTTP/2 connection per target, reconnect backoff, round-robin with unhealthy
targets skipped.

A target whose connect failed is unhealthy until its backoff (gRPC connection backoff: initial
x 1.6 per failure, +-20% jitter, capped) has passed; picks skip it while another target is
healthy. A connection that received GOAWAY takes no new calls (its running calls finish) and the
next call opens a fresh one.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from typing import Any

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from .connection import ClientConnection


class ConnectFailed(GRPCError):
    """No connection to a target (UNAVAILABLE); the call never left the client."""

    def __init__(self, target: str, reason: str) -> None:
        super().__init__(Status.UNAVAILABLE, f"failed to connect to {target}: {reason}")


def parse_target(target: str) -> tuple[str, int]:
    target = target.removeprefix("dns:///").removeprefix("ipv4:")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"target must be host:port, got {target!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


class Endpoint:
    """One target: its connection (one at a time, opened lazily) and its health."""

    __slots__ = (
        "_connecting",
        "authority",
        "backoff_initial",
        "backoff_max",
        "connect_timeout",
        "connection",
        "connection_window",
        "draining",
        "failures",
        "host",
        "keepalive_time",
        "keepalive_timeout",
        "port",
        "retry_at",
        "scheme",
        "server_name",
        "ssl_context",
        "stream_window",
        "target",
    )

    def __init__(
        self,
        target: str,
        *,
        ssl_context: ssl.SSLContext | None,
        connect_timeout: float,
        backoff_initial: float,
        backoff_max: float,
        server_name: str | None = None,
        stream_window: int = 65_535,
        connection_window: int = 65_535,
        keepalive_time: float | None = None,
        keepalive_timeout: float = 20.0,
    ) -> None:
        self.target = target
        self.host, self.port = parse_target(target)
        self.ssl_context = ssl_context
        self.server_name = server_name
        self.scheme = "https" if ssl_context is not None else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.authority = f"{host}:{self.port}"
        self.stream_window = stream_window
        self.connection_window = connection_window
        self.keepalive_time = keepalive_time
        self.keepalive_timeout = keepalive_timeout
        self.connection: ClientConnection | None = None
        #: earlier connections that got a GOAWAY and still finish their calls
        self.draining: set[ClientConnection] = set()
        self._connecting: asyncio.Future[ClientConnection] | None = None
        self.connect_timeout = connect_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.failures = 0
        #: unhealthy until then (time.monotonic())
        self.retry_at = 0.0

    def healthy(self, now: float) -> bool:
        return now >= self.retry_at

    def ready(self) -> ClientConnection | None:
        """The open, usable connection, if any (no GOAWAY received, not lost)."""
        connection = self.connection
        if connection is not None and not connection.goaway and not connection.closed:
            return connection
        return None

    async def connect(self, within: float | None = None) -> ClientConnection:
        connection = self.ready()
        if connection is not None:
            return connection
        if self._connecting is None or self._connecting.done():  # one at a time; others wait
            self._connecting = asyncio.ensure_future(self._connect(within))
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None

    async def _connect(self, within: float | None) -> ClientConnection:
        limit = self.connect_timeout if within is None else min(within, self.connect_timeout)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(limit):
                _, connection = await loop.create_connection(
                    self._factory,
                    self.host,
                    self.port,
                    ssl=self.ssl_context,
                    server_hostname=(
                        (self.server_name or self.host) if self.ssl_context is not None else None
                    ),
                )
            if self.ssl_context is not None:
                ssl_object = connection.transport.get_extra_info("ssl_object")
                if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
                    connection.close()
                    raise ConnectionError("the server did not select h2 (ALPN)")
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            self.failures += 1
            delay = min(self.backoff_initial * 1.6 ** (self.failures - 1), self.backoff_max)
            self.retry_at = time.monotonic() + delay * random.uniform(0.8, 1.2)
            reason = (
                "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
            )
            raise ConnectFailed(self.target, reason) from None
        self.failures = 0
        self.retry_at = 0.0
        old = self.connection
        if old is not None and not old.closed:
            self.draining.add(old)
            old.lost.add_done_callback(lambda _: self.draining.discard(old))
        self.connection = connection
        return connection

    def _factory(self) -> ClientConnection:
        return ClientConnection(
            stream_window=self.stream_window,
            connection_window=self.connection_window,
            keepalive_time=self.keepalive_time,
            keepalive_timeout=self.keepalive_timeout,
        )

    def close(self) -> None:
        for connection in [*self.draining, self.connection]:
            if connection is not None:
                connection.close()
        self.draining.clear()
        self.connection = None

    def __repr__(self) -> str:
        return f"<Endpoint {self.target} failures={self.failures}>"


class Pool:
    """Round-robin over endpoints, skipping unhealthy ones while a healthy one exists."""

    def __init__(self, endpoints: list[Endpoint]) -> None:
        if not endpoints:
            raise ValueError("a Client needs at least one target")
        self.endpoints = endpoints
        self._next = 0

    def pick(self, avoid: Endpoint | None = None) -> Endpoint:
        endpoints = self.endpoints
        n = len(endpoints)
        if n == 1:
            return endpoints[0]
        now = time.monotonic()
        start = self._next
        self._next = (start + 1) % n
        fallback: Endpoint | None = None
        for i in range(n):
            endpoint = endpoints[(start + i) % n]
            if endpoint.healthy(now):
                if endpoint is not avoid:
                    return endpoint
                fallback = fallback or endpoint
        if fallback is not None:
            return fallback
        # every target is backing off: the one that recovers first
        return min(endpoints, key=lambda e: e.retry_at)

    def earliest_retry(self) -> float:
        return min(e.retry_at for e in self.endpoints)

    def close(self) -> None:
        for endpoint in self.endpoints:
            endpoint.close()


def client_ssl_context(
    ca_file: Any = None, cert_file: Any = None, key_file: Any = None
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file and str(ca_file))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["h2"])
    if cert_file is not None:
        ctx.load_cert_chain(str(cert_file), str(key_file))
    return ctx
