"""gzip message compression both ways, the per-message flag, unsupported encodings, bombs."""

from __future__ import annotations

import struct
import zlib
from typing import Any

import grpc
import grpclib_gzip
import pytest
from conftest import channel, running, settings
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError
from h2_client import GRPC_HEADERS, grpc_frame, raw_h2

from gen.echo.v1 import EchoRequest, EchoResponse, EchoServiceStub
from platform_services.echo import EchoServer

ECHO = "/echo.v1.EchoService/Echo"


async def raw_call(ch: Any, body: bytes, flag: bool, metadata: dict[str, str]) -> Any:
    with grpclib_gzip.enabled():
        async with ch.request(
            ECHO, Cardinality.UNARY_UNARY, EchoRequest, EchoResponse, metadata=metadata
        ) as st:
            await st.send_request()
            await st._stream.send_data(struct.pack(">?I", flag, len(body)) + body, end_stream=True)
            st._end_done = True
            return await st.recv_message()


async def test_compressed_request_and_server_default_compression() -> None:
    server = EchoServer(settings(GRPC_COMPRESSION="gzip"))
    async with running(server), channel(server) as ch:
        request = grpclib_gzip.gzip(bytes(EchoRequest(message="zipped", payload=b"a" * 5000)))
        with grpclib_gzip.enabled() as flags:
            reply = await raw_call(
                ch, request, True, {"grpc-encoding": "gzip", "grpc-accept-encoding": "gzip"}
            )
            assert (reply.message, reply.payload_size) == ("zipped", 5000)
            assert flags == [True]  # GRPC_COMPRESSION=gzip and the client accepts it
            plain = await EchoServiceStub(ch).echo(EchoRequest(message="plain"))
            assert plain.message == "plain" and flags == [True, False]  # no accept: no gzip


async def test_grpcio_gzip_both_ways(pb2: Any) -> None:
    server = EchoServer(settings(GRPC_COMPRESSION="gzip"))
    async with (
        running(server),
        grpc.aio.insecure_channel(
            f"127.0.0.1:{server.port}", compression=grpc.Compression.Gzip
        ) as ch,
    ):
        reply = await pb2.echo_grpc.EchoServiceStub(ch).Echo(
            pb2.echo.EchoRequest(message="g", payload=b"z" * 100_000), timeout=10
        )
        assert (reply.message, reply.payload_size) == ("g", 100_000)


async def test_unsupported_encoding_lists_what_is_supported() -> None:
    server = EchoServer(settings())
    async with running(server), channel(server) as ch:
        with grpclib_gzip.enabled(), pytest.raises(GRPCError) as err:
            async with ch.request(
                ECHO,
                Cardinality.UNARY_UNARY,
                EchoRequest,
                EchoResponse,
                metadata={"grpc-encoding": "br"},
            ) as st:
                await st.send_message(EchoRequest(), end=True)
                await st.recv_message()
        assert err.value.status is Status.UNIMPLEMENTED
        assert "grpc-encoding 'br'" in (err.value.message or "")
        # grpclib's client drops grpc-* headers from its metadata: read the server's answer raw
        seen = await raw_h2(
            server.port,
            [*GRPC_HEADERS.items(), ("grpc-encoding", "br")],
            grpc_frame(bytes(EchoRequest())),
        )
        assert seen["grpc-status"] == str(Status.UNIMPLEMENTED.value)
        assert seen["grpc-accept-encoding"] == "gzip,identity"
        assert server.echo.finished == 0


@pytest.mark.parametrize(
    ("body", "flag", "metadata", "status"),
    [
        # 10 MiB of zeros compress to ~10 KiB: refused on the decompressed size
        (
            zlib.compress(b"\0" * (10 << 20), 9, wbits=31),
            True,
            {"grpc-encoding": "gzip"},
            Status.RESOURCE_EXHAUSTED,
        ),
        (b"not gzip at all", True, {"grpc-encoding": "gzip"}, Status.INTERNAL),
        (b"\x0a\x01x", True, {}, Status.INTERNAL),  # compressed flag without an encoding
    ],
    ids=["decompression-bomb", "corrupt-gzip", "flag-without-encoding"],
)
async def test_bad_compressed_requests(
    body: bytes, flag: bool, metadata: dict[str, str], status: Status
) -> None:
    server = EchoServer(settings(GRPC_MAX_MESSAGE_LENGTH=1 << 20))
    async with running(server), channel(server) as ch:
        with pytest.raises(GRPCError) as err:
            await raw_call(ch, body, flag, metadata)
        assert err.value.status is status
        assert server.echo.finished == 0
