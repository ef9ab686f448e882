"""Prometheus: one registry per server, and a small asyncio `/metrics` exporter.

Each server owns a ``CollectorRegistry`` (several servers can share a process, as in tests); the
exporter serves it over HTTP on GRPC_METRICS_PORT, started and stopped with the server.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger("grpcstack.metrics")

_MAX_REQUEST_HEAD = 8192


class MetricsExporter:
    """Serves ``GET /metrics`` (text format 0.0.4) for one registry."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self.registry = registry
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("metrics on http://%s:%s/metrics", self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            if hasattr(self._server, "close_clients"):  # Python >= 3.13
                self._server.close_clients()
            try:
                async with asyncio.timeout(2):
                    await self._server.wait_closed()
            except TimeoutError:
                pass
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                head = await reader.readuntil(b"\r\n\r\n")
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = request_line.split()
            if len(parts) != 3 or parts[0] not in ("GET", "HEAD"):
                await self._reply(writer, 405, b"method not allowed\n", "text/plain")
            elif parts[1].split("?")[0] not in ("/metrics", "/"):
                await self._reply(writer, 404, b"not found\n", "text/plain")
            else:
                body = generate_latest(self.registry)
                await self._reply(writer, 200, body, CONTENT_TYPE_LATEST, head=parts[0] == "HEAD")
        except (
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ConnectionError,
        ):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _reply(
        writer: asyncio.StreamWriter, code: int, body: bytes, ctype: str, head: bool = False
    ) -> None:
        reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}[code]
        writer.write(
            f"HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        )
        if not head:
            writer.write(body)
        await writer.drain()
