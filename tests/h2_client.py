"""A raw HTTP/2 client for one gRPC request: no client library, so no timer and no status of its
own. Whatever status it reports, the server sent it; tests use it to check the server's side."""

from __future__ import annotations

import asyncio
import struct

import h2.connection
import h2.events

GRPC_HEADERS = {
    ":method": "POST",
    ":scheme": "http",
    ":authority": "x",
    ":path": "/echo.v1.EchoService/Echo",
    "content-type": "application/grpc",
    "te": "trailers",
}


def grpc_frame(message: bytes) -> bytes:
    return struct.pack(">?I", False, len(message)) + message


async def raw_h2(
    port: int, headers: list[tuple[str, str]], body: bytes = b"", wait: float = 10
) -> dict[str, str]:
    """One request on a raw h2 connection; returns the response (and trailer) headers. The
    client has no deadline of its own: it waits up to ``wait`` seconds for the server."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = h2.connection.H2Connection()
    conn.initiate_connection()
    conn.send_headers(1, headers, end_stream=not body)
    if body:
        conn.send_data(1, body, end_stream=True)
    writer.write(conn.data_to_send())
    seen: dict[str, str] = {}
    try:
        async with asyncio.timeout(wait):
            while True:
                data = await reader.read(65536)
                assert data, "connection closed"
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                        seen.update({k.decode(): v.decode() for k, v in event.headers})
                    if isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                        return seen
                writer.write(conn.data_to_send())
    finally:
        writer.close()
