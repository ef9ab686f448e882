"""The ASGI application: Connect (unary, GET, streams) and gRPC-Web over a server's services.

Build it from a started ``AsyncBaseServer`` (``server.web_app()``); the stack serves it on
``GRPC_HTTP_PORT`` with Hypercorn (HTTP/1.1 and h2c), and a team may mount the same object in an
existing Starlette/FastAPI application instead. Every call goes through the server's middleware
chain and handlers (see call.py); nothing here knows about any particular service.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from google.protobuf.descriptor_pb2 import MethodOptions
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError
from grpclib.metadata import decode_metadata

from ..compression import GZIP, IDENTITY
from .asgi import lifespan, plain, with_headers
from .call import Responder, WebStream, new_call, run_call
from .connect import ConnectStreamResponder, ConnectUnaryResponder
from .framing import BodyReader, ClientGone, decompress, too_large
from .grpcweb import GrpcWebResponder
from .jsonmap import JsonMapper
from .protocol import (
    GET_ENCODINGS,
    RESERVED_HEADERS,
    RESERVED_PREFIXES,
    Protocol,
    Wire,
    detect,
)
from .request import first, header_map, lists_gzip, request_encoding, timeout_seconds

if TYPE_CHECKING:
    from grpclib.const import Handler

    from ..codec import StackCodec
    from ..middleware.chain import MiddlewareChain

log = logging.getLogger("grpcstack.web")

Scope = dict[str, Any]
DISCARD_SECONDS = 1.0  # how long an unread request body is drained after the answer
DISCARD_OVER_LIMIT = 1 << 20  # how far past the message limit a body is still drained


class WebApp:
    """ASGI app serving ``mapping`` (full method name -> grpclib Handler, already wrapped by
    the chain) over Connect and gRPC-Web."""

    def __init__(
        self,
        *,
        mapping: dict[str, Handler],
        dispatch: Any,
        chain: MiddlewareChain | None,
        codec: StackCodec,
        max_receive_length: int,
        max_send_length: int,
        compress_by_default: bool = False,
        cors_origins: list[str] | tuple[str, ...] = (),
        is_draining: Any = None,
    ) -> None:
        self.mapping = {k: v for k, v in mapping.items() if v is not None}
        self.dispatch = dispatch
        self.chain = chain
        self.codec = codec
        self.mapper = JsonMapper()
        self.max_receive_length = max_receive_length
        self.max_send_length = max_send_length
        self.compress_by_default = compress_by_default
        self.cors_origins = frozenset(cors_origins)
        self._is_draining = is_draining or (lambda: False)
        #: calls in flight, for a drain-style stop
        self.inflight: set[asyncio.Task[None]] = set()
        self.side_effect_free = {m for m, h in self.mapping.items() if _no_side_effects(m, h)}

    # --- ASGI ---------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        headers = header_map(scope)
        cors = self._cors_headers(headers)
        if cors:
            send = with_headers(send, cors)
        method = scope["method"]
        path = scope["path"]
        root = scope.get("root_path") or ""
        if root and path.startswith(root):
            path = path[len(root) :]
        if method == "OPTIONS" and cors:
            await plain(send, 204, b"")
            return
        if method == "GET":
            await self._get(scope, receive, send, path, headers)
        elif method == "POST":
            await self._post(scope, receive, send, path, headers)
        else:
            await plain(send, 405, b"method not allowed", [(b"allow", b"GET, POST")])

    # --- requests -------------------------------------------------------------------------

    async def _post(
        self, scope: Scope, receive: Any, send: Any, path: str, headers: dict[str, str]
    ) -> None:
        content_type = headers.get("content-type", "")
        protocol = detect(content_type)
        if protocol is None:
            await plain(send, 415, b"unsupported content-type", [(b"accept-post", _ACCEPT_POST)])
            return
        handler = self.mapping.get(path)
        unary_method = handler is not None and handler.cardinality is Cardinality.UNARY_UNARY
        if handler is not None and protocol.wire is Wire.CONNECT_UNARY and not unary_method:
            await plain(send, 415, b"streaming method: use application/connect+json or +proto")
            return
        if handler is not None and protocol.wire is Wire.CONNECT_STREAM and unary_method:
            await plain(send, 415, b"unary method: use application/json or application/proto")
            return
        reader = BodyReader(receive, base64_text=protocol.wire is Wire.GRPC_WEB_TEXT)
        responder = self._responder(send, protocol, content_type, headers)
        try:
            if handler is None:
                raise GRPCError(Status.UNIMPLEMENTED, f"Method not found: {path}")
            if self._is_draining():
                raise GRPCError(Status.UNAVAILABLE, "Server is shutting down")
            timeout = timeout_seconds(protocol, headers)
            encoding = request_encoding(protocol, headers)
            # the body is read inside the call (after the chain's request hooks), as over gRPC:
            # a refused oversized or malformed body is counted and logged like any other error
            if protocol.wire is Wire.CONNECT_UNARY:
                source = self._unary_source(reader, headers, encoding)
            else:
                source = self._envelopes(reader, encoding)
        except GRPCError as exc:
            await responder.end(exc.status, exc.message, exc.details, [])
            return
        await self._serve(
            scope, path, handler, protocol, headers, timeout, source, responder, reader
        )

    async def _get(
        self, scope: Scope, receive: Any, send: Any, path: str, headers: dict[str, str]
    ) -> None:
        # latin-1 both ways keeps percent-decoded binary (encoding=proto) byte for byte
        query = parse_qs(
            scope.get("query_string", b"").decode("latin-1"),
            keep_blank_values=True,
            encoding="latin-1",
        )
        codec = GET_ENCODINGS.get(first(query, "encoding") or "")
        handler = self.mapping.get(path)
        responder = ConnectUnaryResponder(send, codec or "json", self.mapper)
        responder.gzip_ok = lists_gzip(headers.get("accept-encoding"))
        responder.compress_default = self.compress_by_default
        try:
            if codec is None:
                raise GRPCError(Status.INVALID_ARGUMENT, "GET needs ?encoding=json or proto")
            if handler is None:
                raise GRPCError(Status.UNIMPLEMENTED, f"Method not found: {path}")
            if path not in self.side_effect_free:
                await plain(
                    send, 405, b"GET only for NO_SIDE_EFFECTS methods", [(b"allow", b"POST")]
                )
                return
            if self._is_draining():
                raise GRPCError(Status.UNAVAILABLE, "Server is shutting down")
            raw = first(query, "message", raw_bytes=True) or b""
            if first(query, "base64") == "1":
                try:
                    raw = base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))
                except (binascii.Error, ValueError):
                    raise GRPCError(Status.INVALID_ARGUMENT, "message is not base64url") from None
            compression = first(query, "compression") or IDENTITY
            if compression not in (GZIP, IDENTITY):
                raise GRPCError(Status.UNIMPLEMENTED, f"Unsupported compression {compression!r}")
            if len(raw) > self.max_receive_length:
                raise too_large(len(raw), self.max_receive_length)
            if compression == GZIP:
                raw = decompress(raw, self.max_receive_length)
            timeout = timeout_seconds(Protocol(Wire.CONNECT_UNARY, codec), headers)
        except GRPCError as exc:
            await responder.end(exc.status, exc.message, exc.details, [])
            return
        protocol = Protocol(Wire.CONNECT_UNARY, codec)
        await self._serve(
            scope,
            path,
            handler,
            protocol,
            headers,
            timeout,
            _once(raw),
            responder,
            BodyReader(receive, complete=True),
        )

    def _unary_source(self, reader: BodyReader, headers: dict[str, str], encoding: str) -> Any:
        sent = False

        async def source() -> bytes | None:
            nonlocal sent
            if sent:
                return None
            sent = True
            return await self._read_unary(reader, headers, encoding)

        return source

    async def _read_unary(
        self, reader: BodyReader, headers: dict[str, str], encoding: str
    ) -> bytes:
        limit = self.max_receive_length
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise too_large(int(length), limit)  # refused before a byte of the body is read
        body = await reader.read_all(limit)
        if encoding == GZIP:
            body = decompress(body, limit)
        return body

    def _envelopes(self, reader: BodyReader, encoding: str) -> Any:
        limit = self.max_receive_length

        async def source() -> bytes | None:
            return await reader.read_envelope(limit, compressed_ok=encoding == GZIP)

        return source

    def _responder(
        self, send: Any, protocol: Protocol, content_type: str, headers: dict[str, str]
    ) -> Responder:
        responder: Responder
        if protocol.wire is Wire.CONNECT_UNARY:
            responder = ConnectUnaryResponder(send, protocol.codec, self.mapper)
            accept = headers.get("accept-encoding")
        elif protocol.wire is Wire.CONNECT_STREAM:
            responder = ConnectStreamResponder(send, protocol.codec, self.mapper)
            accept = headers.get("connect-accept-encoding")
        else:
            base = content_type.split(";", 1)[0].strip().lower()
            responder = GrpcWebResponder(send, base, text=protocol.wire is Wire.GRPC_WEB_TEXT)
            accept = headers.get("grpc-accept-encoding")
        responder.gzip_ok = lists_gzip(accept)
        responder.compress_default = self.compress_by_default
        return responder

    async def _serve(
        self,
        scope: Scope,
        path: str,
        handler: Handler,
        protocol: Protocol,
        headers: dict[str, str],
        timeout_seconds: float | None,
        source: Any,
        responder: Responder,
        reader: BodyReader,
    ) -> None:
        metadata = decode_metadata(
            [
                (k, v)
                for k, v in headers.items()
                if k not in RESERVED_HEADERS and not k.startswith(RESERVED_PREFIXES)
            ]
        )
        call = new_call(
            path, handler, metadata, scope.get("client"), timeout_seconds, protocol.label
        )
        responder.call = call
        stream = WebStream(
            handler=handler,
            codec_name=protocol.codec,
            stack_codec=self.codec,
            json_mapper=self.mapper,
            dispatch=self.dispatch,
            source=source,
            responder=responder,
            call=call,
            max_send_length=self.max_send_length,
        )
        stream.user_agent = headers.get("user-agent")
        length = headers.get("content-length", "")
        if not (length.isdigit() and int(length) > self.max_receive_length + DISCARD_OVER_LIMIT):
            # a body a little over the limit is read and dropped (never buffered) before the
            # answer: an HTTP/1.1 client still uploading it (Go's, in buf curl) would otherwise
            # see the connection close under it and report a broken pipe instead of the error.
            # A far larger one is not worth reading: that connection just closes.
            stream.finish_request = lambda: self._discard(reader)
        task = asyncio.ensure_future(
            run_call(
                chain=self.chain,
                dispatch=self.dispatch,
                method_name=path,
                handler=handler,
                call=call,
                stream=stream,
                content_type=headers.get("content-type", ""),
            )
        )
        self.inflight.add(task)
        task.add_done_callback(self.inflight.discard)
        # once the body is read, a disconnect cancels the call, as RST_STREAM does over gRPC
        watcher = asyncio.ensure_future(_cancel_on_disconnect(reader, task))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            watcher.cancel()

    async def _discard(self, reader: BodyReader) -> None:
        """Answered before the body was read (e.g. refused by Auth, or too large): take the
        rest of it first."""
        if not reader.done.is_set():
            with contextlib.suppress(ClientGone, GRPCError, TimeoutError):
                async with asyncio.timeout(DISCARD_SECONDS):
                    await reader.discard(self.max_receive_length + DISCARD_OVER_LIMIT)

    # --- CORS -------------------------------------------------------------------------

    def _cors_headers(self, headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
        origin = headers.get("origin")
        if not origin or not self.cors_origins:
            return []
        if "*" not in self.cors_origins and origin not in self.cors_origins:
            return []
        return [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"vary", b"Origin"),
            (b"access-control-allow-methods", b"GET, POST"),
            (
                b"access-control-allow-headers",
                headers.get("access-control-request-headers", "*").encode("latin-1"),
            ),
            (b"access-control-expose-headers", _EXPOSE),
            (b"access-control-max-age", b"7200"),
        ]


_ACCEPT_POST = (
    b"application/json, application/proto, application/connect+json, "
    b"application/connect+proto, application/grpc-web, application/grpc-web+proto, "
    b"application/grpc-web-text, application/grpc-web-text+proto"
)
_EXPOSE = b"grpc-status, grpc-message, grpc-status-details-bin, x-correlation-id, retry-after-ms"


def _no_side_effects(method: str, handler: Handler) -> bool:
    descriptor = getattr(handler.request_type, "DESCRIPTOR", None)
    if descriptor is None:
        return False
    try:
        found = descriptor.file.pool.FindMethodByName(method.strip("/").replace("/", "."))
    except KeyError:
        return False
    level = found.GetOptions().idempotency_level
    return bool(level == MethodOptions.NO_SIDE_EFFECTS)


async def _cancel_on_disconnect(reader: BodyReader, task: asyncio.Task[None]) -> None:
    try:
        await reader.done.wait()
        await reader.drain()
    except ClientGone:
        task.cancel()


def _once(body: bytes) -> Any:
    sent = False

    async def source() -> bytes | None:
        nonlocal sent
        if sent:
            return None
        sent = True
        return body

    return source


__all__ = ["WebApp"]
