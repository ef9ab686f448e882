"""gRPC message framing on one stream: size limits, body timeout, gzip, message counters."""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from typing import Any

from grpclib.const import Status
from grpclib.exceptions import GRPCError, ProtocolError
from grpclib.metadata import encode_bin_value, encode_grpc_message, encode_metadata
from multidict import MultiDict

from .._compat import (
    METADATA_VALUE_RE,
    STATUS_DETAILS_KEY,
    ServerStreamBase,
    read_buffered,
    send_data_now,
    send_headers_now,
)
from ..codec import DecodeError
from ..compression import (
    ACCEPT_ENCODING,
    GZIP,
    IDENTITY,
    Corrupt,
    TooLarge,
    gzip_compress,
    gzip_decompress,
)
from ..context import CallContext
from .policy import MessageRoom

log = logging.getLogger("grpcstack.transport")

_PREFIX = struct.Struct(">?I")
#: messages this large are decoded in a worker thread: the pure-Python decoder would otherwise
#: hold the event loop (and every other connection) for as long as it takes
DECODE_IN_THREAD_BYTES = 1024 * 1024


class LimitedStream(ServerStreamBase):
    """A server Stream that rejects oversized messages on their length prefix, bounds what a
    connection holds in half-received messages and how long a body may take, speaks gzip
    message compression, and counts messages for the call's metrics."""

    max_receive_length: int = 4 * 1024 * 1024
    max_send_length: int = 2**31 - 1
    call: CallContext
    conn: MessageRoom
    request_encoding: str = IDENTITY
    accepts_gzip = False  # the client listed gzip in grpc-accept-encoding
    compression_aware = False  # the client sent grpc-accept-encoding at all
    compress_by_default = False

    async def recv_message(self) -> Any:
        h2_stream = self.h2_stream
        try:
            # a unary request is usually all here: read it without a suspension
            meta = read_buffered(h2_stream, 5)
            if meta is None:
                meta = await h2_stream.recv_data(5)
        except AssertionError:  # grpclib's Buffer: the stream ended inside the prefix
            raise GRPCError(Status.INVALID_ARGUMENT, "Truncated message prefix") from None
        if not meta:
            if not self.client_streaming and not self.messages_received:
                # a unary request method's client half-closed without sending its one message
                # (grpc-java's status and words; the stub would fail an assert otherwise)
                raise GRPCError(Status.INTERNAL, "Half-closed without a request")
            return None
        if len(meta) != 5:
            raise GRPCError(Status.INVALID_ARGUMENT, "Truncated message prefix")
        compressed, length = _PREFIX.unpack(meta)
        if compressed and self.request_encoding != GZIP:
            raise GRPCError(Status.INTERNAL, "Compressed message without a grpc-encoding")
        if length > self.max_receive_length:
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"Received message larger than max ({length} vs. {self.max_receive_length})",
            )
        data = await self._recv_body(length) if length else b""
        if compressed:
            try:
                data = gzip_decompress(data, self.max_receive_length)
            except TooLarge as exc:
                raise GRPCError(Status.RESOURCE_EXHAUSTED, f"Received {exc}") from None
            except Corrupt:
                raise GRPCError(
                    Status.INTERNAL, "Could not decompress the request message"
                ) from None
        self.call.request_compressed = bool(compressed)
        try:
            if len(data) >= DECODE_IN_THREAD_BYTES:
                message = await asyncio.to_thread(self.codec.decode, data, self.recv_type)
            else:
                message = self.codec.decode(data, self.recv_type)
        except DecodeError as exc:
            raise GRPCError(
                Status.INVALID_ARGUMENT, f"Could not parse the request message: {exc}"
            ) from None
        except Exception:
            log.info("undecodable %s request", self.method_name, exc_info=True)
            raise GRPCError(
                Status.INVALID_ARGUMENT, "Could not parse the request message"
            ) from None
        (message,) = await self.events.recv_message(message)
        self.note_message_received()
        h2_stream.connection.messages_received += 1
        counter = self.call.msg_received
        if counter is not None:
            counter.inc()
        return message

    async def _recv_body(self, length: int) -> bytes:
        """The body, within the connection's room for half-received messages and the body
        timeout; a body that ends early is INVALID_ARGUMENT, never a traceback."""
        h2_stream = self.h2_stream
        data = read_buffered(h2_stream, length)
        if data is not None:  # all here (a unary request, usually): no wait
            return data
        conn = self.conn
        room = conn.reserve(length)
        timeout = conn.policy.message_body_timeout
        try:
            async with asyncio.timeout(timeout):
                if room is not None:
                    await room
                data = await h2_stream.recv_data(length)
        except TimeoutError:
            raise GRPCError(
                Status.CANCELLED, f"Request message body did not arrive within {timeout:g} s"
            ) from None
        except AssertionError:  # grpclib's Buffer: "Received less data than expected"
            raise GRPCError(Status.INVALID_ARGUMENT, "Truncated message") from None
        finally:
            conn.unreserve(length, room)
        if len(data) != length:
            raise GRPCError(Status.INVALID_ARGUMENT, "Truncated message")
        return data

    async def send_initial_metadata(self, *, metadata: Any = None) -> None:
        """grpclib's, plus the compression headers its metadata encoder refuses (grpc-*) and the
        call's own response headers (``CallContext.response_initial_metadata``: the handler's
        ``add_initial_metadata``, the correlation id), written here rather than through the
        event, which then costs nothing while no middleware listens to it."""
        if self.initial_metadata_sent:
            raise ProtocolError("Initial metadata was already sent")
        headers = [(":status", "200"), ("content-type", self.content_type)]
        if self.accepts_gzip:
            headers.append(("grpc-encoding", GZIP))
        if self.compression_aware:
            headers.append(("grpc-accept-encoding", ACCEPT_ENCODING))
        (md,) = await self.events.send_initial_metadata(MultiDict(metadata or ()))
        if md:
            headers.extend(_encode_metadata(md))
        call = self.call
        call.initial_metadata_sent = True
        if call.response_initial_metadata:
            headers.extend(_encode_metadata(call.response_initial_metadata))
        h2_stream = self.h2_stream
        if not send_headers_now(h2_stream, headers, False):
            await h2_stream.send_headers(headers)
        self.note_initial_metadata_sent()

    async def send_message(self, message: Any) -> None:
        """grpclib's, compressing the message when the call asks for it and the client accepts."""
        if not self.initial_metadata_sent:
            await self.send_initial_metadata()
        if not self.server_streaming and self.message_sent:
            raise ProtocolError("Message was already sent")
        (message,) = await self.events.send_message(message)
        data = self.codec.encode(message, self.send_type)
        if len(data) > self.max_send_length:
            log.error(
                "%s: response of %d bytes is over the max message length %d",
                self.method_name,
                len(data),
                self.max_send_length,
            )
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"Sent message larger than max ({len(data)} vs. {self.max_send_length})",
            )
        compress = False
        if self.accepts_gzip:
            wanted = self.call.compress_response
            compress = self.compress_by_default if wanted is None else wanted
            if compress:
                data = gzip_compress(data)
        h2_stream = self.h2_stream
        framed = _PREFIX.pack(compress, len(data)) + data
        if not send_data_now(h2_stream, framed):
            await h2_stream.send_data(framed)
        self.note_message_sent()
        connection = h2_stream.connection
        connection.messages_sent += 1
        connection.last_message_sent = time.monotonic()
        counter = self.call.msg_sent
        if counter is not None:
            counter.inc()

    async def send_trailing_metadata(
        self,
        *,
        status: Status = Status.OK,
        status_message: str | None = None,
        status_details: Any = None,
        metadata: Any = None,
    ) -> None:
        """grpclib's (same checks, headers, event and reset), writing without a suspension when
        the transport takes writes."""
        if self.trailing_metadata_sent:
            raise ProtocolError("Trailing metadata was already sent")
        if not self.server_streaming and not self.message_sent and status is Status.OK:
            raise ProtocolError(
                "Unary response with OK status requires a single message to be sent"
            )
        if self.initial_metadata_sent:
            headers: list[tuple[str, str]] = []
        else:  # trailers-only response
            headers = [(":status", "200"), ("content-type", self.content_type)]
        headers.append(("grpc-status", _STATUS_TEXT[status]))
        if status_message is not None:
            headers.append(("grpc-message", encode_grpc_message(status_message)))
        details_codec = self.status_details_codec
        if status_details is not None and details_codec is not None:
            encoded = details_codec.encode(status, status_message, status_details)
            headers.append((STATUS_DETAILS_KEY, encode_bin_value(encoded).decode("ascii")))
        (md,) = await self.events.send_trailing_metadata(
            MultiDict(metadata or ()),
            status=status,
            status_message=status_message,
            status_details=status_details,
        )
        if md:
            headers.extend(_encode_metadata(md))
        h2_stream = self.h2_stream
        if not send_headers_now(h2_stream, headers, True):
            await h2_stream.send_headers(headers, end_stream=True)
        self.note_trailing_metadata_sent()
        if status != Status.OK and h2_stream.closable:
            h2_stream.reset_nowait()


_STATUS_TEXT = {status: str(status.value) for status in Status}

#: metadata keys grpclib's encode_metadata accepted (valid, not binary): checked once
_KNOWN_KEYS: set[str] = set()


def _encode_metadata(md: Any) -> list[tuple[str, str]]:
    """grpclib's ``encode_metadata`` (same headers, same errors) of a MultiDict or a list of
    pairs, without checking a key again once it passed; values are checked every time."""
    kind = type(md)
    if kind is MultiDict or kind is list:
        out = []
        fullmatch = METADATA_VALUE_RE.fullmatch
        for key, value in md.items() if kind is MultiDict else md:
            if key not in _KNOWN_KEYS or type(value) is not str or not fullmatch(value):
                break
            out.append((key, value))
        else:
            return out
    headers: list[tuple[str, str]] = encode_metadata(md)
    if (kind is MultiDict or kind is list) and len(_KNOWN_KEYS) < 1024:
        keys = md.keys() if kind is MultiDict else (key for key, _ in md)
        _KNOWN_KEYS.update(key for key in keys if not key.endswith("-bin"))
    return headers
