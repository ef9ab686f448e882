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

from grpclib.config import Configuration
from grpclib.const import Status
from grpclib.encoding.base import CodecBase
from grpclib.encoding.proto import ProtoStatusDetailsCodec
from grpclib.exceptions import GRPCError

from .._compat import ClientProtocol, StackChannelBase


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
    """One target: its channel (one connection) and its health."""

    __slots__ = (
        "backoff_initial",
        "backoff_max",
        "channel",
        "connect_timeout",
        "failures",
        "host",
        "port",
        "retry_at",
        "target",
    )

    def __init__(
        self,
        target: str,
        *,
        codec: CodecBase,
        ssl_context: ssl.SSLContext | None,
        config: Configuration,
        connect_timeout: float,
        backoff_initial: float,
        backoff_max: float,
    ) -> None:
        self.target = target
        self.host, self.port = parse_target(target)
        self.channel = StackChannelBase(
            self.host,
            self.port,
            codec=codec,
            status_details_codec=ProtoStatusDetailsCodec(),
            ssl=ssl_context,
            config=config,
        )
        self.connect_timeout = connect_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.failures = 0
        #: unhealthy until then (time.monotonic())
        self.retry_at = 0.0

    def healthy(self, now: float) -> bool:
        return now >= self.retry_at

    def ready(self) -> ClientProtocol | None:
        return self.channel.connected_protocol()

    async def connect(self, within: float | None = None) -> ClientProtocol:
        protocol = self.channel.connected_protocol()
        if protocol is not None:
            return protocol
        limit = self.connect_timeout if within is None else min(within, self.connect_timeout)
        try:
            async with asyncio.timeout(limit):
                protocol = await self.channel.connect()
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
        return protocol

    def close(self) -> None:
        self.channel.close()

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
