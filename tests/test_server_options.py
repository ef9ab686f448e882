"""TLS / mutual TLS, keepalive pings and SO_REUSEPORT from settings."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from pathlib import Path

import grpc
import h2.connection
import h2.events
import pytest
from conftest import bound_socket, running, settings
from grpclib.client import Channel

from gen.echo.v1 import EchoRequest, EchoServiceStub
from platform_services.echo import EchoServer


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl."""
    d = tmp_path_factory.mktemp("pki")
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        str(d / "ca.key"),
        "-out",
        str(d / "ca.pem"),
    )
    for name, ext in (
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            str(d / f"{name}.key"),
            "-out",
            str(d / f"{name}.csr"),
        )
        (d / f"{name}.ext").write_text(ext + "\n")
        openssl(
            "x509",
            "-req",
            "-in",
            str(d / f"{name}.csr"),
            "-CA",
            str(d / "ca.pem"),
            "-CAkey",
            str(d / "ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            str(d / f"{name}.ext"),
            "-out",
            str(d / f"{name}.pem"),
        )
    return d


def client_ssl(pki: Path, *, with_cert: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    ctx.set_alpn_protocols(["h2"])
    if with_cert:
        ctx.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
    return ctx


async def test_tls_with_grpclib_and_grpcio(pki: Path, pb2) -> None:
    server = EchoServer(
        settings(GRPC_TLS_CERT_FILE=pki / "server.pem", GRPC_TLS_KEY_FILE=pki / "server.key")
    )
    async with running(server):
        ch = Channel("127.0.0.1", server.port, ssl=client_ssl(pki, with_cert=False))
        try:
            assert (await EchoServiceStub(ch).echo(EchoRequest(message="tls"))).message == "tls"
        finally:
            ch.close()
        creds = grpc.ssl_channel_credentials((pki / "ca.pem").read_bytes())
        async with grpc.aio.secure_channel(f"127.0.0.1:{server.port}", creds) as gch:
            reply = await pb2.echo_grpc.EchoServiceStub(gch).Echo(
                pb2.echo.EchoRequest(message="grpcio"), timeout=10
            )
            assert reply.message == "grpcio"
        # a plaintext client cannot talk to the TLS port
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as plain:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await pb2.echo_grpc.EchoServiceStub(plain).Echo(pb2.echo.EchoRequest(), timeout=5)
            assert err.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_requires_a_client_certificate(pki: Path, pb2) -> None:
    server = EchoServer(
        settings(
            GRPC_TLS_CERT_FILE=pki / "server.pem",
            GRPC_TLS_KEY_FILE=pki / "server.key",
            GRPC_TLS_CLIENT_CA_FILE=pki / "ca.pem",
        )
    )
    async with running(server):
        ch = Channel("127.0.0.1", server.port, ssl=client_ssl(pki, with_cert=True))
        try:
            assert (await EchoServiceStub(ch).echo(EchoRequest(message="m"))).message == "m"
        finally:
            ch.close()
        creds = grpc.ssl_channel_credentials((pki / "ca.pem").read_bytes())  # no client cert
        async with grpc.aio.secure_channel(f"127.0.0.1:{server.port}", creds) as gch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await pb2.echo_grpc.EchoServiceStub(gch).Echo(pb2.echo.EchoRequest(), timeout=5)
            assert err.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_keepalive_pings_idle_connections() -> None:
    server = EchoServer(
        settings(GRPC_KEEPALIVE_TIME_MS=100, GRPC_KEEPALIVE_PERMIT_WITHOUT_CALLS=True)
    )
    async with running(server):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        conn = h2.connection.H2Connection()
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        pinged = False
        async with asyncio.timeout(3):
            while not pinged:
                data = await reader.read(65536)
                assert data
                pinged = any(isinstance(e, h2.events.PingReceived) for e in conn.receive_data(data))
                writer.write(conn.data_to_send())  # settings ack and ping ack
        writer.close()
        assert pinged


async def test_reuse_port_lets_two_servers_share_a_port() -> None:
    probe = bound_socket()
    port = probe.getsockname()[1]
    probe.close()
    first = EchoServer(settings(GRPC_SERVER_PORT=port, GRPC_SERVER_REUSE_PORT=True))
    second = EchoServer(settings(GRPC_SERVER_PORT=port, GRPC_SERVER_REUSE_PORT=True))
    await first.start()
    try:
        await second.start()
        try:
            assert first.port == second.port == port
            ch = Channel("127.0.0.1", port)
            assert (await EchoServiceStub(ch).echo(EchoRequest(message="r"))).message == "r"
            ch.close()
        finally:
            await second.stop(0)
    finally:
        await first.stop(0)
