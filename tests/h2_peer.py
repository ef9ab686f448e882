"""A minimal HTTP/2 gRPC server (h2 over asyncio, real TCP on 127.0.0.1) that misbehaves on
purpose in the ways a client must survive: refusing streams, GOAWAY before a stream was
processed, a graceful GOAWAY that still answers the streams it covers, and answers with
``grpc-*`` trailers grpclib servers cannot send (``grpc-retry-pushback-ms``)."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import RequestReceived, StreamEnded


def grpc_frame(payload: bytes) -> bytes:
    return struct.pack(">?I", False, len(payload)) + payload


class H2Peer(asyncio.Protocol):
    def __init__(self, owner: H2PeerServer) -> None:
        self.owner = owner
        self.conn = H2Connection(H2Configuration(client_side=False, header_encoding="utf-8"))
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.conn.initiate_connection()
        transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            if isinstance(event, RequestReceived):
                self.owner.requests += 1
                mode = self.owner.mode
                if mode == "refuse":
                    self.conn.reset_stream(event.stream_id, ErrorCodes.REFUSED_STREAM)
                elif mode == "goaway":
                    # the server never processed this stream
                    self.conn.close_connection(last_stream_id=max(0, event.stream_id - 2))
                    self.transport.write(self.conn.data_to_send())
                    self.transport.close()
                    return
            if isinstance(event, StreamEnded) and self.owner.mode == "raw_headers":
                self.conn.send_headers(event.stream_id, self.owner.trailers, end_stream=True)
            if isinstance(event, StreamEnded) and self.owner.mode == "trailers_only":
                headers = [(":status", "200"), ("content-type", "application/grpc")]
                self.conn.send_headers(
                    event.stream_id, headers + self.owner.trailers, end_stream=True
                )
            if isinstance(event, StreamEnded) and self.owner.mode == "goaway_then_answer":
                # graceful: GOAWAY covering this stream, then its answer, then close
                self.conn.close_connection(last_stream_id=event.stream_id)
                self.transport.write(self.conn.data_to_send())
                self.conn.state_machine.state = _open_state()
                self._answer(event.stream_id)
                self.transport.write(self.conn.data_to_send())
                self.transport.close()
                return
        self.transport.write(self.conn.data_to_send())

    def _answer(self, stream_id: int) -> None:
        self.conn.send_headers(
            stream_id, [(":status", "200"), ("content-type", "application/grpc")]
        )
        self.conn.send_data(stream_id, grpc_frame(self.owner.reply))
        self.conn.send_headers(stream_id, [("grpc-status", "0")], end_stream=True)


def _open_state() -> Any:
    from h2.connection import ConnectionState

    return ConnectionState.SERVER_OPEN


class H2PeerServer:
    def __init__(
        self, mode: str, reply: bytes = b"", trailers: list[tuple[str, str]] | None = None
    ) -> None:
        self.mode = mode
        self.reply = reply
        #: trailers_only mode: the status headers of every answer; raw_headers: all headers
        self.trailers = trailers or []
        self.requests = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> H2PeerServer:
        from conftest import bound_socket

        loop = asyncio.get_running_loop()
        sock = bound_socket()
        self.server = await loop.create_server(lambda: H2Peer(self), sock=sock)
        self.port = sock.getsockname()[1]
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()
