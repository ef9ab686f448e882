"""One call of any cardinality through the grpclib OR the grpcio client, with everything the client
saw: responses, status, message, details, initial and trailing metadata."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError

from gen.echo.v1 import EchoRequest, EchoResponse

CARDINALITY = {
    "Echo": Cardinality.UNARY_UNARY,
    "Collect": Cardinality.STREAM_UNARY,
    "Expand": Cardinality.UNARY_STREAM,
    "Chat": Cardinality.STREAM_STREAM,
}
METHODS = list(CARDINALITY)
CLIENTS = ["grpclib", "grpcio"]


@dataclass
class Outcome:
    status: Status = Status.OK
    message: str | None = None
    details: Any = None
    responses: list[Any] = field(default_factory=list)
    initial: dict[str, str] = field(default_factory=dict)
    trailing: dict[str, str] = field(default_factory=dict)

    def metadata(self, key: str) -> str | None:
        return self.initial.get(key, self.trailing.get(key))


async def call_grpclib(
    ch: Channel, method: str, request: EchoRequest, metadata: dict[str, str] | None, timeout: float
) -> Outcome:
    out = Outcome()
    stream = ch.request(
        f"/echo.v1.EchoService/{method}",
        CARDINALITY[method],
        EchoRequest,
        EchoResponse,
        metadata=metadata,
        timeout=timeout,
    )
    try:
        async with stream as st:
            await st.send_message(request, end=True)
            while (message := await st.recv_message()) is not None:
                out.responses.append(message)
                if not CARDINALITY[method].server_streaming:
                    break
            await st.recv_trailing_metadata()
    except GRPCError as err:
        out.status, out.message, out.details = err.status, err.message, err.details
    out.initial = {k: v for k, v in (stream.initial_metadata or {}).items()}
    out.trailing = {k: v for k, v in (stream.trailing_metadata or {}).items()}
    return out


def call_grpcio(
    port: int,
    pb2: Any,
    method: str,
    request: EchoRequest,
    metadata: dict[str, str] | None,
    timeout: float,
) -> Outcome:
    """grpcio's sync API (run in a thread). Its asyncio API misreports a status that arrives
    before a client-streaming request was written as INTERNAL (grpc/grpc#36066)."""
    out = Outcome()
    req = pb2.echo.EchoRequest.FromString(bytes(request))
    card = CARDINALITY[method]
    kw = {
        "request_serializer": pb2.echo.EchoRequest.SerializeToString,
        "response_deserializer": pb2.echo.EchoResponse.FromString,
    }
    md = tuple((metadata or {}).items())
    arg = iter([req]) if card.client_streaming else req
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        factory = {
            Cardinality.UNARY_UNARY: ch.unary_unary,
            Cardinality.STREAM_UNARY: ch.stream_unary,
            Cardinality.UNARY_STREAM: ch.unary_stream,
            Cardinality.STREAM_STREAM: ch.stream_stream,
        }[card]
        multicallable = factory(f"/echo.v1.EchoService/{method}", **kw)
        result: Any
        try:
            if card.server_streaming:
                result = multicallable(arg, metadata=md, timeout=timeout)
                for message in result:
                    out.responses.append(EchoResponse.parse(message.SerializeToString()))
            else:
                message, result = multicallable.with_call(arg, metadata=md, timeout=timeout)
                out.responses.append(EchoResponse.parse(message.SerializeToString()))
        except grpc.RpcError as err:
            result = err
        out.status = Status(result.code().value[0])
        out.message = result.details() or None
        out.initial = dict(result.initial_metadata() or ())
        out.trailing = dict(result.trailing_metadata() or ())
    return out


async def call(
    client: str,
    port: int,
    method: str,
    request: EchoRequest,
    *,
    metadata: dict[str, str] | None = None,
    pb2: Any = None,
    timeout: float = 10.0,
) -> Outcome:
    if client == "grpclib":
        ch = Channel("127.0.0.1", port)
        try:
            return await call_grpclib(ch, method, request, metadata, timeout)
        finally:
            ch.close()
    return await asyncio.to_thread(call_grpcio, port, pb2, method, request, metadata, timeout)
