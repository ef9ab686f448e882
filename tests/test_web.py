"""Connect and gRPC-Web on the HTTP listener, spoken by hand over httpx: every status path a
client can see, deadlines, limits, GET, streams, metadata, and that the call went through the
middleware chain (metrics with the protocol label, the access log)."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import logging
import socket
from typing import Any

import httpx
import pytest
from google.rpc.error_details_pb2 import RetryInfo
from web_helpers import (
    COLLECT,
    ECHO,
    EXPAND,
    USER,
    decode_grpc_web,
    end_stream,
    envelope,
    handled,
    split_envelopes,
    url,
    web_server,
)

from gen.echo.v1 import EchoRequest, EchoResponse

JSON = {"content-type": "application/json", **USER}


async def post(server: Any, path: str, body: Any, headers: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as client:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return await client.post(url(server, path), content=content, headers=headers)


async def test_connect_json_unary_ok_with_metadata_and_metrics(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="grpcstack.access")
    async with web_server() as server:
        r = await post(server, ECHO, {"message": "hi", "payload": "AAE="}, JSON)
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json"
        assert r.json() == {"message": "hi", "payloadSize": 2}
        assert len(r.headers["x-correlation-id"]) == 32
        # the client's own id is echoed, as over gRPC
        r = await post(server, ECHO, {}, {**JSON, "x-correlation-id": "abc-123"})
        assert r.headers["x-correlation-id"] == "abc-123"
        assert r.json() == {}  # proto3 JSON omits defaults
        assert handled(server, "Echo", "OK", "connect") == 2
        assert handled(server, "Echo", "OK", "grpc") == 0
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "grpcstack.access"]
    assert [(x["grpc.code"], x["user_id"], x["protocol"]) for x in lines] == [
        ("OK", "alice", "connect"),
        ("OK", "alice", "connect"),
    ]


async def test_connect_proto_unary_and_gzip_request() -> None:
    async with web_server() as server:
        body = bytes(EchoRequest(message="bin", payload=b"xyz"))
        r = await post(server, ECHO, body, {"content-type": "application/proto", **USER})
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/proto"
        assert EchoResponse.parse(r.content) == EchoResponse(message="bin", payload_size=3)
        r = await post(
            server,
            ECHO,
            gzip.compress(body),
            {"content-type": "application/proto", "content-encoding": "gzip", **USER},
        )
        assert EchoResponse.parse(r.content).message == "bin"
        r = await post(
            server,
            ECHO,
            body,
            {"content-type": "application/proto", "content-encoding": "br", **USER},
        )
        assert (r.status_code, r.json()["code"]) == (501, "unimplemented")


@pytest.mark.parametrize(
    ("request_body", "http", "code", "text"),
    [
        ({"failWith": "ValueError"}, 400, "invalid_argument", "failing as asked with ValueError"),
        ({"failWith": "KeyError"}, 404, "not_found", "not found"),
        ({"failWith": "RuntimeError"}, 500, "internal", "Internal error"),
        ({"failWith": "GRPCError:9"}, 400, "failed_precondition", "FAILED_PRECONDITION"),
        ({"failWith": "GRPCError:10"}, 409, "aborted", "ABORTED"),
        ({"failWith": "GRPCError:14"}, 503, "unavailable", "UNAVAILABLE"),
        ({"failWith": "GRPCError:7"}, 403, "permission_denied", "PERMISSION_DENIED"),
        ({"count": "many"}, 400, "invalid_argument", "count"),
        ({"sleepSeconds": {"nested": 1}}, 400, "invalid_argument", "sleepSeconds"),
        (b'{"message": ', 400, "invalid_argument", "Could not parse"),
    ],
)
async def test_connect_errors_map_to_http_status(
    request_body: Any, http: int, code: str, text: str
) -> None:
    async with web_server() as server:
        r = await post(server, ECHO, request_body, JSON)
        assert r.status_code == http
        assert r.headers["content-type"] == "application/json"
        error = r.json()
        assert error["code"] == code
        assert text in error["message"]
        assert "Traceback" not in r.text
        assert "trailer-x-correlation-id" in r.headers


async def test_unauthenticated_and_rate_limited_with_retry_info() -> None:
    async with web_server(GRPC_RATE_LIMIT_MAX_REQUESTS=1) as server:
        r = await post(server, ECHO, {}, {"content-type": "application/json"})
        assert (r.status_code, r.json()["code"]) == (401, "unauthenticated")
        assert 'missing "user-id"' in r.json()["message"]
        assert (await post(server, ECHO, {}, JSON)).status_code == 200
        r = await post(server, ECHO, {}, JSON)
        assert r.status_code == 429
        error = r.json()
        assert error["code"] == "resource_exhausted"
        assert "per-caller rate limit of 1 requests" in error["message"]
        assert int(r.headers["trailer-retry-after-ms"]) > 0
        (detail,) = error["details"]
        assert detail["type"] == "google.rpc.RetryInfo"
        value = base64.b64decode(detail["value"] + "=" * (-len(detail["value"]) % 4))
        assert RetryInfo.FromString(value).retry_delay.ToMilliseconds() > 0
        assert handled(server, "Echo", "Unauthenticated", "connect") == 1
        assert handled(server, "Echo", "ResourceExhausted", "connect") == 1


async def test_deadline_from_connect_timeout_ms() -> None:
    async with web_server() as server:
        r = await post(server, ECHO, {"sleepSeconds": 30}, {**JSON, "connect-timeout-ms": "100"})
        assert (r.status_code, r.json()["code"]) == (504, "deadline_exceeded")
        for bad in ("soon", "-1", "12345678901"):
            r = await post(server, ECHO, {}, {**JSON, "connect-timeout-ms": bad})
            assert (r.status_code, r.json()["code"]) == (400, "invalid_argument"), bad
        assert handled(server, "Echo", "DeadlineExceeded", "connect") == 1


async def test_oversized_body_rejected_before_it_is_read() -> None:
    """A Content-Length over the max is answered at once: the server never waits for (nor
    buffers) the 1 GB it announced. The test sends headers only and reads the answer."""
    async with web_server(GRPC_MAX_MESSAGE_LENGTH=1024) as server:
        assert server.http_port is not None
        port = server.http_port

        def exchange(head: str, body: bytes = b"") -> tuple[bytes, Any]:
            with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
                s.sendall(
                    f"POST {ECHO} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                    f"user-id: alice\r\n{head}\r\n\r\n".encode()
                    + body
                )
                data = b""
                while not data.rstrip().endswith(b"}"):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                status, _, rest = data.partition(b"\r\n\r\n")
                return status.split(b"\r\n")[0], json.loads(rest)

        status, error = await asyncio.to_thread(exchange, "content-length: 1000000000")
        assert (status, error["code"]) == (b"HTTP/1.1 429 ", "resource_exhausted")
        # chunked (no length): refused once past the limit
        chunk = b"800\r\n" + b" " * 2048 + b"\r\n"
        status, error = await asyncio.to_thread(exchange, "transfer-encoding: chunked", chunk)
        assert (status, error["code"]) == (b"HTTP/1.1 429 ", "resource_exhausted")
        assert "larger than max" in error["message"]


async def test_protocol_errors() -> None:
    async with web_server() as server, httpx.AsyncClient(timeout=30) as client:
        r = await client.post(url(server, "/echo.v1.EchoService/Nope"), content=b"{}", headers=JSON)
        assert (r.status_code, r.json()["code"]) == (501, "unimplemented")
        r = await client.post(
            url(server, ECHO), content=b"{}", headers={"content-type": "text/xml"}
        )
        assert r.status_code == 415
        r = await client.put(url(server, ECHO), content=b"{}", headers=JSON)
        assert r.status_code == 405
        # a streaming method needs the streaming content type, and the other way round
        r = await client.post(url(server, EXPAND), content=b"{}", headers=JSON)
        assert r.status_code == 415
        r = await client.post(
            url(server, ECHO), content=b"", headers={"content-type": "application/connect+json"}
        )
        assert r.status_code == 415


async def test_get_for_side_effect_free_methods() -> None:
    async with web_server() as server, httpx.AsyncClient(timeout=30) as client:
        params = {"connect": "v1", "encoding": "json", "message": json.dumps({"message": "g"})}
        r = await client.get(url(server, ECHO), params=params, headers=USER)
        assert (r.status_code, r.json()) == (200, {"message": "g"})
        raw = base64.urlsafe_b64encode(bytes(EchoRequest(message="b64"))).rstrip(b"=").decode()
        params = {"connect": "v1", "encoding": "proto", "base64": "1", "message": raw}
        r = await client.get(url(server, ECHO), params=params, headers=USER)
        assert r.status_code == 200
        assert EchoResponse.parse(r.content).message == "b64"
        r = await client.get(url(server, ECHO), params={"message": "{}"}, headers=USER)
        assert (r.status_code, r.json()["code"]) == (400, "invalid_argument")
        # Expand has no idempotency option: GET is not allowed
        r = await client.get(url(server, EXPAND), params={"encoding": "json", "message": "{}"})
        assert r.status_code == 405
        r = await client.get(url(server, ECHO), params={"encoding": "json", "message": "{}"})
        assert (r.status_code, r.json()["code"]) == (401, "unauthenticated")


async def test_connect_server_stream_json_and_error_in_end_stream() -> None:
    headers = {"content-type": "application/connect+json", **USER}
    async with web_server() as server:
        body = envelope(json.dumps({"message": "s", "count": 3}).encode())
        r = await post(server, EXPAND, body, headers)
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/connect+json"
        frames = split_envelopes(r.content)
        assert [json.loads(d) for _, d in frames[:-1]] == [
            {"message": "s"},
            {"message": "s", "index": 1},
            {"message": "s", "index": 2},
        ]
        assert end_stream(frames) == {}  # no error, no trailing metadata
        # an error after two messages: 200, the messages, then the error in the end message
        body = envelope(json.dumps({"count": 2, "failWith": "ValueError"}).encode())
        frames = split_envelopes((await post(server, EXPAND, body, headers)).content)
        assert len(frames) == 3
        error = end_stream(frames)["error"]
        assert error["code"] == "invalid_argument"
        # a rejected stream: no messages, only the end message
        frames = split_envelopes(
            (await post(server, EXPAND, body, {"content-type": "application/connect+json"})).content
        )
        assert end_stream(frames)["error"]["code"] == "unauthenticated"
        assert handled(server, "Expand", "OK", "connect") == 1
        assert handled(server, "Expand", "InvalidArgument", "connect") == 1


async def test_connect_client_stream_proto_with_compressed_envelopes() -> None:
    headers = {
        "content-type": "application/connect+proto",
        "connect-content-encoding": "gzip",
        **USER,
    }
    async with web_server() as server:
        body = b"".join(
            envelope(gzip.compress(bytes(EchoRequest(message=m))), 0x01) for m in "abc"
        ) + envelope(bytes(EchoRequest(message="d")))
        frames = split_envelopes((await post(server, COLLECT, body, headers)).content)
        assert EchoResponse.parse(frames[0][1]) == EchoResponse(message="a,b,c,d", index=4)
        assert "error" not in end_stream(frames)
        # an envelope prefix announcing more than the max: refused on the prefix
        big = b"\x00" + (11 * 1024 * 1024).to_bytes(4, "big")
        frames = split_envelopes((await post(server, COLLECT, big, headers)).content)
        assert end_stream(frames)["error"]["code"] == "resource_exhausted"


@pytest.mark.parametrize("text", [False, True])
async def test_grpc_web_unary_stream_and_errors(text: bool) -> None:
    content_type = "application/grpc-web-text" if text else "application/grpc-web+proto"

    def encode(raw: bytes) -> bytes:
        return base64.b64encode(raw) if text else raw

    async with web_server() as server:
        headers = {"content-type": content_type, "x-grpc-web": "1", **USER}
        r = await post(server, ECHO, encode(envelope(bytes(EchoRequest(message="w")))), headers)
        assert r.status_code == 200
        messages, trailers = decode_grpc_web(r.content, text)
        assert messages == [EchoResponse(message="w")]
        assert trailers["grpc-status"] == "0"
        assert "x-correlation-id" in r.headers
        body = encode(envelope(bytes(EchoRequest(message="s", count=2, fail_with="GRPCError:5"))))
        messages, trailers = decode_grpc_web(
            (await post(server, EXPAND, body, headers)).content, text
        )
        assert [m.index for m in messages] == [0, 1]
        assert trailers["grpc-status"] == "5"
        assert "NOT_FOUND" in trailers["grpc-message"]
        r = await post(server, ECHO, body, {"content-type": content_type})
        messages, trailers = decode_grpc_web(r.content, text)
        assert (messages, trailers["grpc-status"]) == ([], "16")
        r = await post(
            server,
            ECHO,
            encode(envelope(bytes(EchoRequest(sleep_seconds=30)))),
            {**headers, "grpc-timeout": "100m"},
        )
        assert decode_grpc_web(r.content, text)[1]["grpc-status"] == "4"
        assert handled(server, "Echo", "OK", "grpc-web") == 1
        assert handled(server, "Expand", "NotFound", "grpc-web") == 1
        assert handled(server, "Echo", "DeadlineExceeded", "grpc-web") == 1


async def test_grpc_call_still_counted_with_protocol_grpc() -> None:
    from conftest import channel

    from gen.echo.v1 import EchoServiceStub

    async with web_server(GRPC_ENABLE_AUTH=False) as server, channel(server) as ch:
        assert (await EchoServiceStub(ch).echo(EchoRequest(message="g"))).message == "g"
        assert handled(server, "Echo", "OK", "grpc") == 1
        assert handled(server, "Echo", "OK", "connect") == 0


async def test_client_disconnect_cancels_the_call() -> None:
    async with web_server() as server:
        assert server.http_port is not None
        body = json.dumps({"sleepSeconds": 30}).encode()
        _reader, writer = await asyncio.open_connection("127.0.0.1", server.http_port)
        writer.write(
            f"POST {ECHO} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            f"user-id: alice\r\ncontent-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        await asyncio.wait_for(server.echo.started.wait(), 20)
        writer.close()
        await writer.wait_closed()
        for _ in range(2000):
            if handled(server, "Echo", "Canceled", "connect") == 1:
                break
            await asyncio.sleep(0.01)
        assert handled(server, "Echo", "Canceled", "connect") == 1


async def test_stop_drains_http_calls_and_refuses_new_ones() -> None:
    async with web_server() as server, httpx.AsyncClient(timeout=30) as client:
        slow = asyncio.ensure_future(
            client.post(
                url(server, ECHO), json={"message": "slow", "sleepSeconds": 0.5}, headers=USER
            )
        )
        await asyncio.wait_for(server.echo.started.wait(), 20)
        stopping = asyncio.ensure_future(server.stop(10))
        while not server.grpc_server or not server.grpc_server.draining:
            await asyncio.sleep(0.01)
        r = await client.post(url(server, ECHO), json={}, headers=USER)
        assert (r.status_code, r.json()["code"]) == (503, "unavailable")
        done = await slow
        assert (done.status_code, done.json()) == (200, {"message": "slow"})
        await stopping


async def test_refused_bodies_are_counted_like_grpc_errors() -> None:
    """The body is read inside the call, after the chain's request hooks: an oversized or
    malformed body is counted (and logged) like the same error over gRPC; a client gone in the
    middle of its body is Canceled."""
    async with web_server(GRPC_MAX_MESSAGE_LENGTH=1024) as server:
        r = await post(server, ECHO, {"payload": base64.b64encode(b"x" * 4096).decode()}, JSON)
        assert (r.status_code, r.json()["code"]) == (429, "resource_exhausted")
        r = await post(server, ECHO, b"{]", JSON)
        assert (r.status_code, r.json()["code"]) == (400, "invalid_argument")
        assert handled(server, "Echo", "ResourceExhausted", "connect") == 1
        assert handled(server, "Echo", "InvalidArgument", "connect") == 1
        assert server.http_port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", server.http_port)
        writer.write(
            f"POST {COLLECT} HTTP/1.1\r\nhost: x\r\ncontent-type: application/connect+json\r\n"
            "user-id: alice\r\ntransfer-encoding: chunked\r\n\r\n".encode()
            + b"a\r\n"
            + envelope(b'{"a":1}')[:10]
            + b"\r\n"
        )
        await writer.drain()
        for _ in range(2000):  # the call has started: its request hooks ran
            if server.metrics_registry.get_sample_value(
                "grpc_server_in_flight",
                {
                    "grpc_service": "echo.v1.EchoService",
                    "grpc_method": "Collect",
                    "grpc_type": "client_stream",
                    "protocol": "connect",
                },
            ):
                break
            await asyncio.sleep(0.01)
        writer.close()
        await writer.wait_closed()
        del reader
        for _ in range(2000):
            if handled(server, "Collect", "Canceled", "connect") == 1:
                break
            await asyncio.sleep(0.01)
        assert handled(server, "Collect", "Canceled", "connect") == 1


async def test_response_compression_by_setting_and_by_handler() -> None:
    """gzip only for clients that accept it: by GRPC_COMPRESSION=gzip, or per call by the
    handler (set_response_compression), for unary, Connect streams and gRPC-Web."""
    import zlib

    async with web_server(GRPC_COMPRESSION="gzip") as server, httpx.AsyncClient() as client:
        r = await client.post(
            url(server, ECHO),
            json={"message": "z" * 500},
            headers={**USER, "accept-encoding": "gzip"},
        )
        assert r.headers["content-encoding"] == "gzip"
        assert r.json() == {"message": "z" * 500}  # httpx inflated it
        r = await client.post(
            url(server, ECHO),
            json={"message": "z"},
            headers={**USER, "accept-encoding": "identity"},
        )
        assert "content-encoding" not in r.headers
        r = await client.post(
            url(server, EXPAND),
            content=envelope(json.dumps({"message": "s", "count": 2}).encode()),
            headers={
                **USER,
                "content-type": "application/connect+json",
                "connect-accept-encoding": "gzip",
            },
        )
        assert r.headers["connect-content-encoding"] == "gzip"
        frames = split_envelopes(r.content)
        assert [f for f, _ in frames] == [1, 1, 2]  # compressed messages, plain end message
        assert json.loads(zlib.decompress(frames[1][1], 16 + zlib.MAX_WBITS)) == {
            "message": "s",
            "index": 1,
        }
        r = await client.post(
            url(server, ECHO),
            content=envelope(bytes(EchoRequest(message="w"))),
            headers={
                **USER,
                "content-type": "application/grpc-web+proto",
                "grpc-accept-encoding": "gzip",
            },
        )
        (flags, data), (trailer_flags, _) = split_envelopes(r.content)
        assert (flags, trailer_flags) == (1, 0x80)
        assert EchoResponse.parse(zlib.decompress(data, 16 + zlib.MAX_WBITS)).message == "w"


async def test_handler_asks_for_compression() -> None:
    from conftest import running, settings

    from grpcstack.context import set_response_compression
    from platform_services.echo import EchoServer

    class Compressing(EchoServer):
        def services(self) -> list[Any]:
            services = super().services()
            original = self.echo.echo

            async def echo(message: EchoRequest) -> EchoResponse:
                set_response_compression(message.message == "squeeze")
                return await original(message)

            self.echo.echo = echo  # type: ignore[method-assign]
            return services

    async with (
        running(Compressing(settings(GRPC_HTTP_PORT=0))) as server,
        httpx.AsyncClient() as client,
    ):
        for text, expected in (("squeeze", "gzip"), ("plain", None)):
            r = await client.post(
                url(server, ECHO), json={"message": text}, headers={"accept-encoding": "gzip"}
            )
            assert r.headers.get("content-encoding") == expected
            assert r.json() == {"message": text}


async def test_curl_json_errors_and_get() -> None:
    """curl itself (HTTP/1.1), for the error paths the README does not show."""
    import shutil

    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")

    async def curl(*argv: str) -> tuple[int, dict[str, Any]]:
        proc = await asyncio.create_subprocess_exec(
            "curl", "-sS", "-w", "\n%{http_code}", *argv, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        body, _, code = out.decode().rpartition("\n")
        return int(code), json.loads(body)

    async with web_server(GRPC_RATE_LIMIT_MAX_REQUESTS=3) as server:
        target = url(server, ECHO)
        json_headers = ["-H", "content-type: application/json", "-H", "user-id: alice"]
        assert await curl(*json_headers, "-d", '{"count": "x"}', target) == (
            400,
            {
                "code": "invalid_argument",
                "message": "Could not parse the request message: Failed to parse count field: "
                "invalid literal for int() with base 10: 'x'.",
            },
        )
        code, error = await curl("-H", "content-type: application/json", "-d", "{}", target)
        assert (code, error["code"]) == (401, "unauthenticated")
        code, error = await curl(
            *json_headers, "-H", "connect-timeout-ms: 50", "-d", '{"sleepSeconds": 10}', target
        )
        assert (code, error["code"]) == (504, "deadline_exceeded")
        query = "?connect=v1&encoding=json&message=%7B%22message%22%3A%22g%22%7D"
        assert await curl("-H", "user-id: alice", target + query) == (200, {"message": "g"})
        code, error = await curl("-H", "user-id: alice", target + query)
        assert (code, error["code"]) == (429, "resource_exhausted")
        assert error["details"][0]["type"] == "google.rpc.RetryInfo"


async def test_curl_oversized_body_refused_from_its_length(tmp_path: Any) -> None:
    """curl posting 2 MB over a 64 KiB limit: refused with 429 resource_exhausted from the
    announced Content-Length (the size the error quotes), before the app reads the body (the
    raw-socket test above shows the answer comes without it). Counted by the chain."""
    import shutil

    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"message": "x" * 2_000_000}))
    size = big.stat().st_size
    async with web_server(GRPC_MAX_MESSAGE_LENGTH=65536) as server:
        proc = await asyncio.create_subprocess_exec(
            "curl",
            "-sS",
            "-w",
            "\n%{http_code}",
            "-H",
            "content-type: application/json",
            "-H",
            "user-id: alice",
            "--data-binary",
            f"@{big}",
            url(server, ECHO),
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        body, _, code = out.decode().rpartition("\n")
        error = json.loads(body)
        assert (int(code), error["code"]) == (429, "resource_exhausted")
        assert f"larger than max ({size} vs. 65536)" in error["message"]
        assert handled(server, "Echo", "ResourceExhausted", "connect") == 1
