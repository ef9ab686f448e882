"""One call over HTTP, run through the same middleware chain and handlers as a gRPC call.

``WebStream`` is what a grpclib handler function sees (``recv_message``, ``send_message``,
``send_initial_metadata``, ``send_trailing_metadata``, ``metadata``, ``peer``, ``deadline``), so
betterproto2's generated ``__rpc_*`` functions, ``@cached`` and the middlewares' ``wrap`` hooks
run unchanged. It dispatches grpclib's server events (RecvRequest, SendInitialMetadata,
SendTrailingMetadata) on the gRPC server's dispatcher, which is where the chain listens: a call
over Connect or gRPC-Web is authenticated, limited, counted and logged like a gRPC call. How
bytes are framed on the HTTP side is the ``Responder``'s business (connect.py, grpcweb.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.metadata import Deadline, encode_metadata
from multidict import MultiDict

from ..codec import DecodeError
from ..context import CallContext, set_current
from .jsonmap import JsonError, JsonMapper

if TYPE_CHECKING:
    from grpclib.const import Handler

    from ..codec import StackCodec
    from ..middleware.chain import MiddlewareChain

log = logging.getLogger("grpcstack.web")

Headers = list[tuple[str, str]]
#: the next raw request message (already de-framed and decompressed), None at the end
Source = Callable[[], Awaitable[bytes | None]]


class Responder:
    """The HTTP side of a call: how headers, messages and the final status are written.

    ``gzip_ok``: the client accepts gzip; then a message is compressed when the call asks for it
    (``grpcstack.context.set_response_compression``) or, by default, with GRPC_COMPRESSION=gzip.
    """

    gzip_ok = False
    compress_default = False
    call: CallContext | None = None

    def compress_now(self) -> bool:
        if not self.gzip_ok:
            return False
        wanted = self.call.compress_response if self.call is not None else None
        return self.compress_default if wanted is None else wanted

    async def headers(self, metadata: Headers) -> None:
        raise NotImplementedError

    async def message(self, data: bytes) -> None:
        raise NotImplementedError

    async def end(
        self, status: Status, message: str | None, details: Any, trailers: Headers
    ) -> None:
        raise NotImplementedError


class WebPeer:
    """grpclib's Peer interface for an ASGI client address."""

    def __init__(self, client: tuple[str, int] | None) -> None:
        self._addr = client

    def addr(self) -> tuple[str, int] | None:
        return self._addr

    def cert(self) -> None:
        return None


class WebStream:
    """A grpclib-Stream look-alike over one HTTP request."""

    def __init__(
        self,
        *,
        handler: Handler,
        codec_name: str,
        stack_codec: StackCodec,
        json_mapper: JsonMapper,
        dispatch: Any,
        source: Source,
        responder: Responder,
        call: CallContext,
        max_send_length: int,
    ) -> None:
        self._handler = handler
        self._json = codec_name == "json"
        self._codec = stack_codec
        self._mapper = json_mapper
        self._dispatch = dispatch
        self._source = source
        self._responder = responder
        self.call = call
        self.max_send_length = max_send_length
        self.metadata: MultiDict[Any] = call.metadata
        self.peer = call.peer
        self.deadline = call.deadline
        self.user_agent: str | None = None
        self.initial_sent = False
        self.trailers_sent = False
        #: drops what is left of the request body before the final answer: an HTTP/1.1 server
        #: cannot keep a connection whose request was not read, an h2 one resets the stream
        self.finish_request: Callable[[], Awaitable[None]] | None = None
        self.messages_sent = 0

    # --- receiving --------------------------------------------------------------------

    async def recv_message(self) -> Any:
        data = await self._source()
        if data is None:
            return None
        message_type = self._handler.request_type
        try:
            if self._json:
                data = self._mapper.json_to_wire(data, message_type)
            message = self._codec.decode(data, message_type)
        except (JsonError, DecodeError) as exc:
            raise GRPCError(
                Status.INVALID_ARGUMENT, f"Could not parse the request message: {exc}"
            ) from None
        except Exception:
            log.info("undecodable %s request", self.call.method, exc_info=True)
            raise GRPCError(
                Status.INVALID_ARGUMENT, "Could not parse the request message"
            ) from None
        (message,) = await self._dispatch.recv_message(message)
        counter = self.call.msg_received
        if counter is not None:
            counter.inc()
        return message

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        while (message := await self.recv_message()) is not None:
            yield message

    # --- sending ----------------------------------------------------------------------

    async def send_initial_metadata(self, *, metadata: Any = None) -> None:
        if self.initial_sent:
            raise GRPCError(Status.INTERNAL, "Initial metadata was already sent")
        (md,) = await self._dispatch.send_initial_metadata(MultiDict(metadata or ()))
        self.initial_sent = True
        call = self.call
        if call is not None:
            call.initial_metadata_sent = True
            if call.response_initial_metadata:  # as the gRPC transport writes them
                md.extend(call.response_initial_metadata)
        await self._responder.headers(list(encode_metadata(md)))

    async def send_message(self, message: Any) -> None:
        if not self.initial_sent:
            await self.send_initial_metadata()
        if not self._handler.cardinality.server_streaming and self.messages_sent:
            raise GRPCError(Status.INTERNAL, "Unary response was already sent")
        (message,) = await self._dispatch.send_message(message)
        reply_type = self._handler.reply_type
        # JSON of a handler's own message: printed directly (jsonprint); else via wire bytes.
        # The send limit applies to the body as sent (JSON text or protobuf bytes).
        # (only for the declared type: the codec's encode reports any other as INTERNAL)
        direct = self._json and type(message) is reply_type
        data = self._mapper.direct_json(message) if direct else None
        if data is None:
            data = self._codec.encode(message, reply_type)  # PreEncoded (cache hits) pass
            if self._json:
                data = self._mapper.wire_to_json(data, reply_type)
        if len(data) > self.max_send_length:
            log.error(
                "%s: response of %d bytes is over the max message length %d",
                self.call.method,
                len(data),
                self.max_send_length,
            )
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"Sent message larger than max ({len(data)} vs. {self.max_send_length})",
            )
        await self._responder.message(data)
        self.messages_sent += 1
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
        if self.trailers_sent:
            raise GRPCError(Status.INTERNAL, "Trailing metadata was already sent")
        if (
            status is Status.OK
            and not self._handler.cardinality.server_streaming
            and not self.messages_sent
        ):
            status, status_message = Status.UNKNOWN, "Internal Server Error"
            log.error("%s: unary handler sent no response", self.call.method)
        self.trailers_sent = True
        (md,) = await self._dispatch.send_trailing_metadata(
            MultiDict(metadata or ()),
            status=status,
            status_message=status_message,
            status_details=status_details,
        )
        try:
            trailers = list(encode_metadata(md))
        except (TypeError, ValueError):
            trailers = []
        if self.finish_request is not None:
            await self.finish_request()
        await self._responder.end(status, status_message, status_details, trailers)

    async def cancel(self) -> None:
        raise asyncio.CancelledError()


async def run_call(
    *,
    chain: MiddlewareChain | None,
    dispatch: Any,
    method_name: str,
    handler: Handler,
    call: CallContext,
    stream: WebStream,
    content_type: str,
) -> None:
    """Serve one call the way the gRPC transport does: RecvRequest (the chain's request hooks,
    which may reject), the handler under the deadline, trailers with the final status, and one
    ``chain.finish``. Runs in its own task so the per-call context reaches the handler."""
    set_current(call)
    deadline = call.deadline
    try:
        try:
            async with asyncio.timeout(deadline.time_remaining() if deadline else None):
                stream.metadata, method_func = await dispatch.recv_request(
                    call.metadata,
                    handler.func,
                    method_name=method_name,
                    deadline=deadline,
                    content_type=content_type,
                    user_agent=stream.user_agent,
                    peer=stream.peer,
                )
                await method_func(stream)
            if not stream.trailers_sent:
                await stream.send_trailing_metadata()
        except GRPCError as exc:
            if not stream.trailers_sent:
                await stream.send_trailing_metadata(
                    status=exc.status, status_message=exc.message, status_details=exc.details
                )
        except TimeoutError:
            if deadline is not None and deadline.time_remaining() <= 0:
                if not stream.trailers_sent:
                    await stream.send_trailing_metadata(
                        status=Status.DEADLINE_EXCEEDED, status_message="Deadline exceeded"
                    )
            else:
                raise
    except asyncio.CancelledError:
        call.peer_cancelled = True  # the HTTP client went away
        raise
    except StreamTerminatedError:
        call.peer_cancelled = True  # ... while its request body was still being read
    except Exception:
        log.exception("Application error in %s", method_name)
        if not stream.trailers_sent:
            await stream.send_trailing_metadata(
                status=Status.UNKNOWN, status_message="Internal Server Error"
            )
    finally:
        if chain is not None:
            chain.finish(call)


def new_call(
    method_name: str,
    handler: Handler,
    metadata: MultiDict[Any],
    client: tuple[str, int] | None,
    timeout: float | None,
    protocol: str,
) -> CallContext:
    deadline = Deadline.from_timeout(timeout) if timeout is not None else None
    call = CallContext(method_name, handler.cardinality, metadata, WebPeer(client), deadline)  # type: ignore[arg-type]
    call.protocol = protocol
    return call
