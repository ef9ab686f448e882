"""The listening side: connections, their policy, in-flight calls, and a drain."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Any

import h2.config

from .._compat import ServerBase, cache_frame_flag_names, lazy_frame_repr, lean_state_machines
from ..context import CallContext
from .connection import StackProtocol
from .dispatch import StackHandler
from .policy import ConnectionPolicy, NullObserver, TransportObserver


class GrpcServer(ServerBase):
    """grpclib Server with per-connection limits, a message size limit, tracking and drain."""

    def __init__(
        self,
        handlers: Any,
        *,
        policy: ConnectionPolicy | None = None,
        observer: TransportObserver | None = None,
        max_receive_message_length: int = 4 * 1024 * 1024,
        max_send_message_length: int = 2**31 - 1,
        compress_by_default: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(handlers, **kwargs)
        cache_frame_flag_names()
        lazy_frame_repr()
        lean_state_machines()
        self.policy = policy or ConnectionPolicy()
        self.observer: TransportObserver = observer or NullObserver()
        self.compress_by_default = compress_by_default
        self.max_send_message_length = max_send_message_length
        self.max_receive_message_length = max_receive_message_length
        # headers as bytes: the transport decodes them per stream, so one non-ASCII byte is
        # that stream's error, not an exception out of the connection
        self.stack_h2_config = h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_inbound_headers=False,
            validate_outbound_headers=False,
            normalize_inbound_headers=False,
            normalize_outbound_headers=False,
        )
        self.protocols: weakref.WeakSet[StackProtocol] = weakref.WeakSet()
        #: connections we closed whose socket is still open (reading on after our FIN): a stop
        #: waits for them, or the process would exit under them and the kernel answer the
        #: peer's next frame with a TCP RST, which can cost the peer input it has not parsed yet
        self.lingering: set[StackProtocol] = set()
        self._lingering_over: asyncio.Event | None = None
        self.inflight: set[asyncio.Task[None]] = set()
        #: set by stop(): health reports NOT_SERVING, connections are drained
        self.draining = False
        #: calls cancelled while stopping end with UNAVAILABLE instead of nothing
        self.stopping = False
        #: called once per call when it is over (the middleware chain closes its books there)
        self.on_call_done: Callable[[CallContext], None] | None = None

    @property
    def max_concurrent_streams(self) -> int:
        return self.policy.max_concurrent_streams

    def protocol_factory(self) -> StackProtocol:
        self.gc_step()
        handler = StackHandler(self)
        self.handlers.add(handler)
        protocol = handler.protocol = StackProtocol(self, handler)
        return protocol

    def forget_handler(self, handler: StackHandler) -> None:
        """A closed connection's handler: its tasks were cancelled; drop it (and with it every
        buffer its streams held) instead of keeping it until grpclib's next GC step."""
        handler.close()
        self.handlers.discard(handler)  # its cancelled tasks stay in `inflight` until done

    def linger_done(self, protocol: StackProtocol) -> None:
        self.lingering.discard(protocol)
        if not self.lingering and self._lingering_over is not None:
            self._lingering_over.set()

    async def wait_lingering(self) -> None:
        """Until every connection we closed has its socket closed (bounded by the linger)."""
        if self.lingering:
            if self._lingering_over is None or self._lingering_over.is_set():
                self._lingering_over = asyncio.Event()
            await self._lingering_over.wait()

    def track(self, task: asyncio.Task[None]) -> None:
        self.inflight.add(task)
        task.add_done_callback(self.inflight.discard)

    @property
    def listening_sockets(self) -> list[Any]:
        server = self.asyncio_server
        return list(server.sockets) if server is not None else []

    def stop_listening(self) -> None:
        if self.asyncio_server is not None:
            self.asyncio_server.close()

    def cancel_inflight(self) -> set[asyncio.Task[None]]:
        tasks = {t for t in self.inflight if not t.done()}
        for task in tasks:
            task.cancel()
        return tasks

    def drain_all(self) -> int:
        """Start a drain on every connection (see ``StackProtocol.drain``)."""
        protocols = list(self.protocols)
        for protocol in protocols:
            protocol.drain()
        return len(protocols)

    def goaway_all(self) -> int:
        """Final GOAWAY and close on every connection (what is still open after the grace)."""
        protocols = [p for p in list(self.protocols) if p.open]
        for protocol in protocols:
            protocol.close_now()
        return len(protocols)
