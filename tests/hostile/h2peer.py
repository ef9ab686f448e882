"""A raw HTTP/2 peer (the h2 library over asyncio streams) that can misbehave on purpose."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings

ECHO = "/echo.v1.EchoService/Echo"
HEALTH = "/grpc.health.v1.Health/Check"


def grpc_headers(path: str = ECHO, *extra: tuple[str, str], sid: int | None = None) -> list:
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "127.0.0.1"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        *extra,
    ]


def frame(message: bytes) -> bytes:
    return struct.pack(">?I", False, len(message)) + message


def echo_request(text: str = "hi") -> bytes:
    raw = text.encode()
    return frame(b"\x0a" + bytes([len(raw)]) + raw)


class Peer:
    """One connection. ``events`` collects every h2 event received, in order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.events: list[Any] = []
        self.closed = False
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(
        cls,
        port: int,
        *,
        validate: bool = True,
        stream_window: int = 2**30,
        big_connection: bool = True,
    ) -> Peer:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        peer = cls(reader, writer)
        if not validate:
            peer.h2.config.validate_outbound_headers = False
            peer.h2.config.normalize_outbound_headers = False
        peer.h2.initiate_connection()
        # big windows by default: the tests decide what the server may send, not flow control
        if big_connection:
            peer.h2.increment_flow_control_window(2**30)
        peer.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: stream_window})
        peer.flush()
        peer._task = asyncio.create_task(peer._read())
        return peer

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    def write_raw(self, data: bytes) -> None:
        self.writer.write(data)

    async def _read(self) -> None:
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                try:
                    events = self.h2.receive_data(data)
                except h2.exceptions.ProtocolError:
                    break
                for event in events:
                    if isinstance(event, h2.events.DataReceived):
                        self.h2.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                self.events.extend(events)
                self.flush()
                self._changed.set()
        except (ConnectionError, OSError):
            pass
        finally:
            self.closed = True
            self._changed.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                if predicate():
                    return
                await self._changed.wait()

    def of(self, kind: type, sid: int | None = None) -> list[Any]:
        return [
            e
            for e in self.events
            if isinstance(e, kind) and (sid is None or getattr(e, "stream_id", None) == sid)
        ]

    def status(self, sid: int) -> int | None:
        """The grpc-status of a stream (trailers or trailers-only), None while open."""
        for event in self.events:
            if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                if event.stream_id == sid:
                    for name, value in event.headers:
                        if name == "grpc-status":
                            return int(value)
        return None

    def message(self, sid: int) -> str | None:
        for event in self.events:
            if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                if event.stream_id == sid:
                    for name, value in event.headers:
                        if name == "grpc-message":
                            return str(value)
        return None

    def goaway(self) -> Any | None:
        found = self.of(h2.events.ConnectionTerminated)
        return found[0] if found else None

    def reset_codes(self) -> dict[int, int]:
        return {e.stream_id: e.error_code for e in self.of(h2.events.StreamReset)}

    def request(
        self, body: bytes | None = None, path: str = ECHO, *extra: tuple[str, str], end: bool = True
    ) -> int:
        sid = self.h2.get_next_available_stream_id()
        self.h2.send_headers(sid, grpc_headers(path, *extra), end_stream=body is None and end)
        if body is not None:
            self.h2.send_data(sid, body, end_stream=end)
        self.flush()
        return sid

    async def close(self) -> None:
        self.writer.close()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass
