"""Prometheus: one registry per server, and a small asyncio `/metrics` exporter.

Each server owns a ``CollectorRegistry`` (several servers can share a process, as in tests); the
exporter serves it over HTTP on GRPC_METRICS_PORT, started and stopped with the server.

The format follows the scraper's ``Accept`` header: Prometheus's text format 0.0.4 by default, and
OpenMetrics when asked for (Prometheus does with exemplar storage on): only OpenMetrics carries the
trace-id exemplars that the tracing middleware attaches to the latency histogram.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

log = logging.getLogger("grpcstack.metrics")

_MAX_REQUEST_HEAD = 8192
_TRACE_EXPORTER_VARIABLES = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_TRACES_EXPORTER",
)


def trace_exporter_configured(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the standard OTEL_* variables ask for a trace exporter (GRPC_TRACING=auto turns
    tracing on then). Checked without importing OpenTelemetry."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return any(env.get(name) for name in _TRACE_EXPORTER_VARIABLES)


class MetricsExporter:
    """Serves ``GET /metrics`` for one registry, in the format the ``Accept`` header picks."""

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
            request_line, _, header_block = head.decode("latin-1").partition("\r\n")
            parts = request_line.split()
            if len(parts) != 3 or parts[0] not in ("GET", "HEAD"):
                await self._reply(writer, 405, b"method not allowed\n", "text/plain")
            elif parts[1].split("?")[0] not in ("/metrics", "/"):
                await self._reply(writer, 404, b"not found\n", "text/plain")
            else:
                body, ctype = await self.render(_header(header_block, "accept"))
                await self._reply(writer, 200, body, ctype, head=parts[0] == "HEAD")
        except (
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ConnectionError,
        ):
            pass
        finally:
            writer.close()

    async def render(self, accept: str) -> tuple[bytes, str]:
        """The exposition body and its content type for a scrape with this ``Accept`` header."""
        encoder, ctype = choose_encoder(accept)
        return encoder(self.registry), ctype

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


def _header(block: str, name: str) -> str:
    for line in block.split("\r\n"):
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == name:
            return value.strip()
    return ""
