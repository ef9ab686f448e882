"""grpc.testing.TestService on grpcstack: the server side of gRPC's interoperability cases.

Serve it for any implementation's interop client::

    grpcstack serve platform_services.interop:InteropServer --port 10000

It runs the default middleware chain; Auth is restricted by its selector to everything but
grpc.testing.* (interop clients send no user id). Behaviour follows grpc/grpc's
doc/interop-test-descriptions.md: response sizes, echoed statuses (any code, any UTF-8 message),
echoed ``x-grpc-test-echo-initial`` / ``x-grpc-test-echo-trailing-bin`` metadata, ``interval_us``,
and per-call / per-message gzip compression (``response_compressed`` and ``expect_compressed``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from gen.grpc.testing import (
    BoolValue,
    EchoStatus,
    Empty,
    Payload,
    SimpleRequest,
    SimpleResponse,
    StreamingInputCallRequest,
    StreamingInputCallResponse,
    StreamingOutputCallRequest,
    StreamingOutputCallResponse,
    TestServiceBase,
)
from grpcstack import AsyncBaseServer, ServerSettings
from grpcstack.context import CallContext, current_call, set_response_compression
from grpcstack.middleware import AuthMiddleware, Middleware, all_but, services

INTEROP_SERVICES = (
    "grpc.testing.TestService",
    "grpc.testing.UnimplementedService",
    "grpc.testing.ReconnectService",
)
ECHO_INITIAL = "x-grpc-test-echo-initial"
ECHO_TRAILING = "x-grpc-test-echo-trailing-bin"
MAX_PAYLOAD = 4 * 1024 * 1024


def _payload(size: int) -> Payload:
    if size < 0 or size > MAX_PAYLOAD:
        raise GRPCError(Status.INVALID_ARGUMENT, f"payload size {size} out of range")
    return Payload(body=bytes(size))


def _raise_status(status: EchoStatus | None) -> None:
    if status is not None and status.code != 0:
        try:
            code = Status(status.code)
        except ValueError:
            code = Status.UNKNOWN
        raise GRPCError(code, status.message)


def _check_compressed(expect: BoolValue | None) -> None:
    call = current_call()
    if expect is not None and expect.value and call is not None and not call.request_compressed:
        raise GRPCError(Status.INVALID_ARGUMENT, "expected a compressed request")


def _compress(flag: BoolValue | None) -> None:
    set_response_compression(bool(flag is not None and flag.value))


class TestService(TestServiceBase):
    __test__ = False  # not a pytest class

    async def empty_call(self, message: Empty) -> Empty:
        return Empty()

    async def unary_call(self, message: SimpleRequest) -> SimpleResponse:
        _check_compressed(message.expect_compressed)
        _raise_status(message.response_status)
        _compress(message.response_compressed)
        return SimpleResponse(payload=_payload(message.response_size))

    async def cacheable_unary_call(self, message: SimpleRequest) -> SimpleResponse:
        return await self.unary_call(message)

    async def _respond(
        self, request: StreamingOutputCallRequest
    ) -> AsyncIterator[StreamingOutputCallResponse]:
        for params in request.response_parameters:
            if params.interval_us > 0:
                await asyncio.sleep(params.interval_us / 1_000_000)
            _compress(params.compressed)
            yield StreamingOutputCallResponse(payload=_payload(params.size))

    async def streaming_output_call(
        self, message: StreamingOutputCallRequest
    ) -> AsyncIterator[StreamingOutputCallResponse]:
        async for response in self._respond(message):
            yield response
        _raise_status(message.response_status)

    async def streaming_input_call(
        self, messages: AsyncIterator[StreamingInputCallRequest]
    ) -> StreamingInputCallResponse:
        total = 0
        async for message in messages:
            _check_compressed(message.expect_compressed)
            if message.payload is not None:
                total += len(message.payload.body)
        return StreamingInputCallResponse(aggregated_payload_size=total)

    async def full_duplex_call(
        self, messages: AsyncIterator[StreamingOutputCallRequest]
    ) -> AsyncIterator[StreamingOutputCallResponse]:
        async for message in messages:
            _raise_status(message.response_status)
            async for response in self._respond(message):
                yield response

    async def half_duplex_call(
        self, messages: AsyncIterator[StreamingOutputCallRequest]
    ) -> AsyncIterator[StreamingOutputCallResponse]:
        buffered = [message async for message in messages]
        for message in buffered:
            _raise_status(message.response_status)
            async for response in self._respond(message):
                yield response


class EchoTestMetadata(Middleware):
    """Echoes the interop test headers: the initial one in the initial metadata (or in the
    trailers of a trailers-only response), the binary trailing one in the trailers."""

    name = "interop-echo-metadata"

    def on_initial_metadata(self, event: Any, call: CallContext) -> None:
        value = call.metadata.get(ECHO_INITIAL)
        if value is not None:
            event.metadata[ECHO_INITIAL] = value

    def on_trailers(self, event: Any, call: CallContext) -> None:
        if not call.initial_metadata_sent:
            value = call.metadata.get(ECHO_INITIAL)
            if value is not None:
                event.metadata[ECHO_INITIAL] = value
        trailing = call.metadata.get(ECHO_TRAILING)
        if trailing is not None:
            event.metadata[ECHO_TRAILING] = trailing


class InteropSettings(ServerSettings):
    SERVICE_NAME: str = "interop"
    GRPC_SERVER_ENABLE_REFLECTION: bool = True
    GRPC_RATE_LIMIT_MAX_REQUESTS: int = 100_000


class InteropServer(AsyncBaseServer):
    settings_class = InteropSettings

    def services(self) -> list[Any]:
        return [TestService()]

    def middlewares(self) -> list[Middleware]:
        chain = []
        for middleware in super().middlewares():
            if isinstance(middleware, AuthMiddleware):
                # interop clients send no user id: Auth applies to everything else
                middleware.selector = all_but(services(*INTEROP_SERVICES))
            chain.append(middleware)
        chain.insert(-1, EchoTestMetadata())
        return chain
