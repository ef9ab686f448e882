"""Serving the web app on its own port with Hypercorn (HTTP/1.1 via h11, HTTP/2 and h2c via h2),
on the gRPC server's event loop."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

log = logging.getLogger("grpcstack.web")


class WebListener:
    def __init__(self, app: Any, *, keep_alive_seconds: float = 5.0) -> None:
        self.app = app
        self.keep_alive_seconds = keep_alive_seconds
        self.port: int | None = None
        self._shutdown = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int, sock: socket.socket | None = None) -> None:
        from hypercorn.asyncio.run import worker_serve
        from hypercorn.config import Config, Sockets
        from hypercorn.utils import wrap_app

        if sock is None:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.listen(1024)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        config = Config()
        config.accesslog = None  # the middleware chain writes the access log
        config.errorlog = log
        config.keep_alive_timeout = self.keep_alive_seconds
        # Hypercorn closes a connection after 1000 requests by default; an h2c client then sees
        # its in-flight streams fail. Connections live as long as the gRPC side's do.
        config.keep_alive_max_requests = 2**31 - 1
        config.include_server_header = False
        # the server drains calls itself before stopping us; this only lets responses flush
        config.graceful_timeout = 1.0
        started = asyncio.get_running_loop().create_future()

        async def trigger() -> None:
            if not started.done():
                started.set_result(None)
            await self._shutdown.wait()

        self._task = asyncio.ensure_future(
            worker_serve(
                wrap_app(self.app, config.wsgi_max_body_size, "asgi"),
                config,
                sockets=Sockets(secure_sockets=[], insecure_sockets=[sock], quic_sockets=[]),
                shutdown_trigger=trigger,
            )
        )
        done, _ = await asyncio.wait({self._task, started}, return_when=asyncio.FIRST_COMPLETED)
        if self._task in done:
            self._task.result()  # raises the start-up error
            raise RuntimeError("HTTP listener stopped at start")

    async def stop(self, wait_seconds: float = 5.0) -> None:
        self._shutdown.set()
        if self._task is not None:
            try:
                async with asyncio.timeout(wait_seconds):
                    await self._task
            except TimeoutError:
                log.warning("HTTP listener did not stop within %ss", wait_seconds)
                self._task.cancel()
            except Exception:
                log.exception("HTTP listener failed while stopping")
            self._task = None
