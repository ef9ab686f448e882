"""TLS / mutual TLS, keepalive pings and SO_REUSEPORT from settings."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any

import grpc
import h2.connection
import h2.events
import pytest
from conftest import running, settings
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
    # the probe keeps the port (it is in the same SO_REUSEPORT group, never listening), so no
    # other process can take it between the probe and the servers' binds
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    first = EchoServer(settings(GRPC_SERVER_PORT=port, GRPC_SERVER_REUSE_PORT=True))
    second = EchoServer(settings(GRPC_SERVER_PORT=port, GRPC_SERVER_REUSE_PORT=True))
    try:
        await first.start()
    finally:
        probe.close()
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


async def _h2_connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = h2.connection.H2Connection()
    conn.initiate_connection()
    writer.write(conn.data_to_send())
    return reader, writer, conn


async def test_keepalive_timeout_closes_a_connection_that_never_acks() -> None:
    """h2 answers pings by itself in data_to_send(); this client never sends anything after its
    preface, so no ack leaves: the server must give up on the connection."""
    server = EchoServer(
        settings(
            GRPC_KEEPALIVE_TIME_MS=100,
            GRPC_KEEPALIVE_TIMEOUT_MS=300,
            GRPC_KEEPALIVE_PERMIT_WITHOUT_CALLS=True,
        )
    )
    async with running(server):
        reader, writer, conn = await _h2_connect(server.port)
        pings = 0
        try:
            async with asyncio.timeout(10):
                while data := await reader.read(65536):
                    events = conn.receive_data(data)
                    pings += sum(isinstance(e, h2.events.PingReceived) for e in events)
        finally:
            writer.close()
        assert pings >= 1  # it was pinged, then closed (EOF) for not answering


async def test_keepalive_acked_connection_stays_open() -> None:
    server = EchoServer(
        settings(
            GRPC_KEEPALIVE_TIME_MS=100,
            GRPC_KEEPALIVE_TIMEOUT_MS=300,
            GRPC_KEEPALIVE_PERMIT_WITHOUT_CALLS=True,
        )
    )
    async with running(server):
        reader, writer, conn = await _h2_connect(server.port)
        loop = asyncio.get_running_loop()
        first_ping: float | None = None
        try:
            async with asyncio.timeout(10):
                # keep acking until well past the keepalive timeout since the first ping
                while first_ping is None or loop.time() - first_ping < 3 * 0.3:
                    left = 10 if first_ping is None else first_ping + 3 * 0.3 - loop.time()
                    try:
                        data = await asyncio.wait_for(reader.read(65536), max(left, 0.01))
                    except TimeoutError:
                        continue  # quiet: grpclib stops pinging a connection without data
                    assert data, "the server closed a connection that acked its pings"
                    for event in conn.receive_data(data):
                        if isinstance(event, h2.events.PingReceived) and first_ping is None:
                            first_ping = loop.time()
                    writer.write(conn.data_to_send())  # acks
                # still alive: our own ping is answered
                conn.ping(b"alive?!!")
                writer.write(conn.data_to_send())
                acked = False
                while not acked:
                    data = await reader.read(65536)
                    assert data, "connection closed"
                    events = conn.receive_data(data)
                    acked = any(isinstance(e, h2.events.PingAckReceived) for e in events)
                    writer.write(conn.data_to_send())
        finally:
            writer.close()


async def test_connection_window_is_raised_to_the_setting() -> None:
    size = 3 * 1024 * 1024
    server = EchoServer(settings(GRPC_HTTP2_CONNECTION_WINDOW_SIZE=size))
    async with running(server):
        reader, writer, conn = await _h2_connect(server.port)
        delta = None
        try:
            async with asyncio.timeout(10):
                while delta is None:
                    data = await reader.read(65536)
                    assert data, "connection closed"
                    for event in conn.receive_data(data):
                        if isinstance(event, h2.events.WindowUpdated) and event.stream_id == 0:
                            delta = event.delta
                    writer.write(conn.data_to_send())
        finally:
            writer.close()
        assert 65535 + delta == size  # from the protocol's initial 65,535 bytes to the setting


async def test_metrics_buckets_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPC_METRICS_BUCKETS", "[0.001, 0.5, 30]")
    server = EchoServer(settings())
    async with running(server):
        ch = Channel("127.0.0.1", server.port)
        try:
            await EchoServiceStub(ch).echo(EchoRequest(message="b"))
        finally:
            ch.close()
        bounds = {}
        for family in server.metrics_registry.collect():
            for sample in family.samples:
                if (
                    sample.name == "grpc_server_handling_seconds_bucket"
                    and sample.labels["grpc_method"] == "Echo"
                ):
                    bounds[sample.labels["le"]] = sample.value
    assert set(bounds) == {"0.001", "0.5", "30.0", "+Inf"}
    assert bounds["+Inf"] == 1 and bounds["30.0"] == 1
