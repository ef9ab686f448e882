"""grpcstack.Client over TLS and mutual TLS against the stack's own TLS server."""

from __future__ import annotations

from pathlib import Path

import pytest
from client_helpers import client_settings
from conftest import running, settings
from grpclib.const import Status
from test_server_options import pki  # noqa: F401 - the module-scoped PKI fixture

from gen.echo.v1 import EchoRequest, EchoServiceStub
from grpcstack.client import Client, MethodConfig, RetryPolicy, RpcError
from platform_services.echo import EchoServer

NO_RETRY = {"echo.v1.EchoService": MethodConfig(timeout=10, retry=RetryPolicy(max_attempts=1))}


async def test_tls_verifies_the_server_with_the_ca(pki: Path) -> None:  # noqa: F811
    server = EchoServer(
        settings(GRPC_TLS_CERT_FILE=pki / "server.pem", GRPC_TLS_KEY_FILE=pki / "server.key")
    )
    async with running(server):
        target = f"127.0.0.1:{server.port}"
        s = client_settings(GRPC_CLIENT_TLS_CA_FILE=pki / "ca.pem")
        async with Client(target, settings=s) as client:
            reply = await client.stub(EchoServiceStub).echo(EchoRequest(message="tls"))
            assert reply.message == "tls"
        # without the CA the server's certificate is not trusted: UNAVAILABLE, clearly
        async with Client(
            target, settings=client_settings(GRPC_CLIENT_TLS=True), methods=NO_RETRY
        ) as client:
            with pytest.raises(RpcError) as err:
                await client.stub(EchoServiceStub).echo(EchoRequest(message="x"))
            assert err.value.status is Status.UNAVAILABLE
            assert "CERTIFICATE_VERIFY_FAILED" in (err.value.message or "")


async def test_mutual_tls_sends_the_client_certificate(pki: Path) -> None:  # noqa: F811
    server = EchoServer(
        settings(
            GRPC_TLS_CERT_FILE=pki / "server.pem",
            GRPC_TLS_KEY_FILE=pki / "server.key",
            GRPC_TLS_CLIENT_CA_FILE=pki / "ca.pem",
        )
    )
    async with running(server):
        target = f"127.0.0.1:{server.port}"
        s = client_settings(
            GRPC_CLIENT_TLS_CA_FILE=pki / "ca.pem",
            GRPC_CLIENT_TLS_CERT_FILE=pki / "client.pem",
            GRPC_CLIENT_TLS_KEY_FILE=pki / "client.key",
        )
        async with Client(target, settings=s) as client:
            reply = await client.stub(EchoServiceStub).echo(EchoRequest(message="mtls"))
            assert reply.message == "mtls"
        async with Client(
            target,
            settings=client_settings(GRPC_CLIENT_TLS_CA_FILE=pki / "ca.pem"),
            methods=NO_RETRY,
        ) as client:
            with pytest.raises(RpcError) as err:
                await client.stub(EchoServiceStub).echo(EchoRequest(message="x"))
            assert err.value.status is Status.UNAVAILABLE
