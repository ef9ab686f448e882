"""The same ASGI application mounted in an existing FastAPI app (on the gRPC server's loop), CORS
for browsers on another origin, and binary (-bin) metadata both ways."""

from __future__ import annotations

import base64

import httpx
import pytest
from web_helpers import ECHO, USER, url, web_server

from grpcstack.context import current_call
from platform_services.echo import EchoServer


async def test_mounted_in_fastapi() -> None:
    fastapi = pytest.importorskip("fastapi")
    async with web_server() as server:
        app = fastapi.FastAPI()

        @app.get("/legacy/ping")
        async def ping() -> dict[str, str]:
            return {"pong": "yes"}

        app.mount("/rpc", server.web_app())
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            assert (await client.get("/legacy/ping")).json() == {"pong": "yes"}
            r = await client.post(f"/rpc{ECHO}", json={"message": "mounted"}, headers=USER)
            assert (r.status_code, r.json()) == (200, {"message": "mounted"})
            r = await client.post(f"/rpc{ECHO}", json={})
            assert (r.status_code, r.json()["code"]) == (401, "unauthenticated")
        # counted like any other Connect call
        value = server.metrics_registry.get_sample_value(
            "grpc_server_handled_total",
            {
                "grpc_service": "echo.v1.EchoService",
                "grpc_method": "Echo",
                "grpc_type": "unary",
                "protocol": "connect",
                "grpc_code": "OK",
            },
        )
        assert value == 1


async def test_cors_for_allowed_origins_only() -> None:
    async with (
        web_server(GRPC_HTTP_CORS_ORIGINS=["https://app.example"]) as server,
        httpx.AsyncClient(timeout=30) as client,
    ):
        preflight = await client.options(
            url(server, ECHO),
            headers={
                "origin": "https://app.example",
                "access-control-request-method": "POST",
                "access-control-request-headers": "content-type,user-id,x-grpc-web",
            },
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        assert "user-id" in preflight.headers["access-control-allow-headers"]
        r = await client.post(
            url(server, ECHO), json={}, headers={**USER, "origin": "https://app.example"}
        )
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        assert "grpc-status" in r.headers["access-control-expose-headers"]
        r = await client.post(
            url(server, ECHO), json={}, headers={**USER, "origin": "https://evil"}
        )
        assert "access-control-allow-origin" not in r.headers
        r = await client.options(url(server, ECHO), headers={"origin": "https://evil"})
        assert r.status_code == 405


async def test_binary_metadata_both_ways() -> None:
    seen: dict[str, object] = {}

    class Recording(EchoServer):
        def services(self) -> list[object]:
            services = super().services()
            original = self.echo.echo

            async def echo(message: object) -> object:
                call = current_call()
                assert call is not None
                seen["trace"] = call.metadata.get("trace-bin")
                seen["plain"] = call.metadata.get("x-plain")
                return await original(message)  # type: ignore[arg-type]

            self.echo.echo = echo  # type: ignore[method-assign]
            return services

    from conftest import running, settings

    async with (
        running(Recording(settings(GRPC_HTTP_PORT=0))) as server,
        httpx.AsyncClient(timeout=30) as client,
    ):
        raw = bytes(range(256))
        r = await client.post(
            url(server, ECHO),
            json={"message": "m"},
            headers={"trace-bin": base64.b64encode(raw).decode(), "x-plain": "v"},
        )
        assert r.status_code == 200
        assert seen == {"trace": raw, "plain": "v"}
