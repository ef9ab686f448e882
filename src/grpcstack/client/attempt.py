"""One attempt of a call: one HTTP/2 stream on one connection.

Sends the request headers and the first message in one transport write, enforces the maximum
receive length on the 5-byte message prefix (before the message is buffered), speaks gzip, and
reports every way an attempt can end as an :class:`AttemptError` carrying the status, the
trailers (for server pushback) and whether the server never saw the stream (refused: safe to
retry transparently).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from grpclib.const import Status
from grpclib.encoding.base import GRPC_CONTENT_TYPE
from grpclib.exceptions import GRPCError
from grpclib.metadata import decode_bin_value, decode_grpc_message, decode_metadata

from ..compression import GZIP, Corrupt, TooLarge, gzip_decompress
from .frames import StreamError
from .stream import Stream

if TYPE_CHECKING:
    from grpclib.metadata import _Metadata

    from .connection import ClientConnection

_PREFIX = struct.Struct(">?I")
_H2_TO_GRPC = {
    "400": Status.INTERNAL,
    "401": Status.UNAUTHENTICATED,
    "403": Status.PERMISSION_DENIED,
    "404": Status.UNIMPLEMENTED,
    "502": Status.UNAVAILABLE,
    "503": Status.UNAVAILABLE,
    "504": Status.UNAVAILABLE,
}


_STATUS_TEXT = {str(s.value): s for s in Status}


class _LastValid:
    """The last response headers (not trailers-only) and OK trailers that passed the checks. The
    connection's HPACK decoder returns the very same list for a repeated block, so a response
    whose headers are that list object needs no checking again."""

    headers: tuple[object, str | None] = (None, None)
    trailers: object = None


_last_valid = _LastValid()


class AttemptError(Exception):
    """How an attempt ended when not OK."""

    def __init__(
        self,
        status: Status,
        message: str | None,
        *,
        details: Any = None,
        trailers: _Metadata | None = None,
        refused: bool = False,
        sent: bool = True,
        raw: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message
        self.details = details
        self.trailers = trailers
        #: the server never processed the stream (REFUSED_STREAM, over a GOAWAY's last id)
        self.refused = refused
        #: False when nothing left the client (no connection)
        self.sent = sent
        #: every trailer as received, grpc-* included (grpc-retry-pushback-ms)
        self.raw = raw


def frame(data: bytes, compressed: bool = False) -> bytes:
    return _PREFIX.pack(compressed, len(data)) + data


class Attempt:
    __slots__ = (
        "codec",
        "details_codec",
        "encoding",
        "error",
        "headers",
        "headers_done",
        "max_receive",
        "reply_type",
        "stream",
        "trailers",
        "trailers_only",
    )

    def __init__(self, codec: Any, details_codec: Any, reply_type: type, max_receive: int) -> None:
        self.codec = codec
        self.details_codec = details_codec
        self.reply_type = reply_type
        self.max_receive = max_receive
        self.stream: Stream | None = None
        #: set by ``cancel``: every later wait of this attempt raises it
        self.error: BaseException | None = None
        self.headers_done = False
        self.trailers_only = False
        self.encoding: str | None = None
        #: raw response headers and trailers; metadata is decoded only when asked for
        self.headers: list[tuple[str, str]] | None = None
        self.trailers: list[tuple[str, str]] | None = None

    @property
    def initial_metadata(self) -> _Metadata | None:
        if self.headers is None:
            return None
        if self.trailers_only:
            return decode_metadata([])
        return decode_metadata(self.headers)

    @property
    def trailing_metadata(self) -> _Metadata | None:
        trailers = self.headers if self.trailers_only else self.trailers
        return None if trailers is None else decode_metadata(trailers)

    @property
    def committed(self) -> bool:
        """Response headers (not trailers-only) arrived: the call cannot be retried any more."""
        return self.headers_done and not self.trailers_only

    # --- sending ------------------------------------------------------------------------

    async def open(
        self,
        connection: ClientConnection,
        prefix: tuple[tuple[bytes, bytes], ...],
        rest: list[tuple[bytes, bytes]],
        data: bytes | None,
        end: bool,
    ) -> None:
        """Open the stream: the method's fixed headers, the call's own, the first message."""
        stream = self.stream = connection.new_stream()
        if self.error is not None:
            raise self.error
        await connection.open(stream, prefix, rest, data, end)

    async def send(self, data: bytes, end: bool) -> None:
        assert self.stream is not None
        await self.stream.send_data(data, end)

    async def end(self) -> None:
        assert self.stream is not None
        await self.stream.send_data(b"", True)

    def cancel(self, exc: BaseException) -> None:
        """Wake the call's task out of any wait on this attempt with ``exc`` (the deadline)."""
        self.error = exc
        if self.stream is not None:
            self.stream.fail(exc)

    # --- receiving ----------------------------------------------------------------------

    def _status(self, headers: dict[str, str]) -> tuple[Status, str | None, Any]:
        raw = headers.get("grpc-status")
        if raw is None:
            return Status.UNKNOWN, "Missing grpc-status header", None
        status = _STATUS_TEXT.get(raw)
        if status is None:
            try:
                status = Status(int(raw))
            except ValueError:
                return Status.UNKNOWN, f"Invalid grpc-status: {raw!r}", None
        if status is Status.OK:
            return status, None, None
        message = headers.get("grpc-message")
        if message is not None:
            message = decode_grpc_message(message)
        details = None
        details_bin = headers.get("grpc-status-details-bin")
        if details_bin is not None and self.details_codec is not None:
            try:
                details = self.details_codec.decode(
                    status, message, decode_bin_value(details_bin.encode("ascii"))
                )
            except Exception:  # undecodable details must not hide the status
                details = None
        return status, message, details

    async def recv_headers(self) -> None:
        assert self.stream is not None
        self._check_headers(await self.stream.recv_headers())

    def _check_headers(self, headers: list[tuple[str, str]]) -> None:
        self.headers = headers
        self.headers_done = True
        last = _last_valid.headers
        if headers is last[0]:  # the decoder's cached list: the same block as last time
            self.encoding = last[1]
            return
        headers_map = dict(headers)
        http_status = headers_map.get(":status")
        if http_status != "200":
            status = _H2_TO_GRPC.get(str(http_status), Status.UNKNOWN)
            raise AttemptError(status, f"Received :status = {http_status!r}")
        content_type = headers_map.get("content-type")
        if content_type is None or content_type.partition("+")[0] != GRPC_CONTENT_TYPE:
            raise AttemptError(Status.UNKNOWN, f"Invalid content-type: {content_type!r}")
        self.encoding = headers_map.get("grpc-encoding")
        if "grpc-status" not in headers_map:
            _last_valid.headers = (headers, self.encoding)
        else:  # trailers-only
            self.trailers_only = True
            status, message, details = self._status(headers_map)
            if status is not Status.OK:
                raise AttemptError(
                    status,
                    message,
                    details=details,
                    trailers=decode_metadata(headers),
                    raw=headers_map,
                )

    async def recv_message(self) -> Any:
        """The next message, or None after OK trailers; AttemptError otherwise."""
        if not self.headers_done:
            await self.recv_headers()
        if self.trailers_only:
            return None
        return await self._recv_message()

    async def _recv_message(self) -> Any:
        stream = self.stream
        assert stream is not None
        buffer = stream.buffer
        if len(buffer) >= 5:  # the usual case: the whole response arrived in one read
            compressed, length = _PREFIX.unpack_from(buffer)
            if len(buffer) >= 5 + length and length <= self.max_receive and not compressed:
                data = bytes(buffer[5 : 5 + length])
                del buffer[: 5 + length]
                try:
                    return self.codec.decode(data, self.reply_type)
                except Exception as exc:
                    raise AttemptError(
                        Status.INTERNAL, f"Could not decode response: {exc}"
                    ) from None
        meta = await stream.read(5)
        if len(meta) < 5:
            if meta:
                raise AttemptError(Status.INTERNAL, "Stream ended inside a message")
            await self._recv_trailers()
            return None
        compressed, length = _PREFIX.unpack(meta)
        if length > self.max_receive:
            raise AttemptError(
                Status.RESOURCE_EXHAUSTED,
                f"Received message larger than max ({length} vs. {self.max_receive})",
            )
        data = await stream.read(length)
        if len(data) < length:
            raise AttemptError(Status.INTERNAL, "Stream ended inside a message")
        if compressed:
            if self.encoding != GZIP:
                raise AttemptError(Status.INTERNAL, "Compressed message without grpc-encoding")
            try:
                data = gzip_decompress(data, self.max_receive)
            except TooLarge as exc:
                raise AttemptError(Status.RESOURCE_EXHAUSTED, str(exc)) from None
            except Corrupt as exc:
                raise AttemptError(Status.INTERNAL, f"Invalid gzip message: {exc}") from None
        try:
            return self.codec.decode(data, self.reply_type)
        except Exception as exc:
            raise AttemptError(Status.INTERNAL, f"Could not decode response: {exc}") from None

    async def _recv_trailers(self) -> None:
        stream = self.stream
        assert stream is not None
        trailers = await stream.recv_trailers()
        if trailers is None:
            raise AttemptError(Status.UNKNOWN, "Stream ended without grpc-status trailers")
        self.trailers = trailers
        if trailers is _last_valid.trailers:
            return
        raw = dict(trailers)
        status, message, details = self._status(raw)
        if status is Status.OK:
            _last_valid.trailers = trailers
        else:
            metadata = decode_metadata(trailers)
            raise AttemptError(status, message, details=details, trailers=metadata, raw=raw)

    async def unary(
        self,
        connection: ClientConnection,
        prefix: tuple[tuple[bytes, bytes], ...],
        rest: list[tuple[bytes, bytes]],
        data: bytes,
    ) -> Any:
        """The whole of a unary-unary attempt: one request, one response, the trailers."""
        stream = self.stream = connection.new_stream()
        if self.error is not None:
            raise self.error
        await connection.open(stream, prefix, rest, data, True)
        if stream.headers is None:
            await stream.recv_headers()
        self._check_headers(stream.headers)  # type: ignore[arg-type]
        if self.trailers_only:
            raise AttemptError(Status.UNKNOWN, "No response message (trailers-only OK)")
        reply = await self._recv_message()
        if reply is None:
            raise AttemptError(Status.UNKNOWN, "No response message")
        if await self._recv_message() is not None:
            raise AttemptError(Status.UNKNOWN, "More than one response message")
        return reply

    # --- ending -------------------------------------------------------------------------

    def error_from(self, exc: BaseException) -> AttemptError:
        """Classify an exception raised by this attempt's stream."""
        if isinstance(exc, AttemptError):
            return exc
        if isinstance(exc, StreamError):
            return AttemptError(exc.status, exc.message, refused=exc.refused)
        if isinstance(exc, GRPCError):
            return AttemptError(exc.status, exc.message, details=exc.details)
        if isinstance(exc, (ConnectionError, OSError)):
            return AttemptError(Status.UNAVAILABLE, f"Connection failed: {exc}")
        raise exc

    def close(self) -> None:
        """Reset the stream if it is still open, and forget it."""
        stream = self.stream
        if stream is not None:
            stream.close()
