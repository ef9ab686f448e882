"""The LLM service: the offline extractive analyzer through the full chain, the streaming
contract, ValidateDSL (cached) and the OpenAI-compatible engine's SSE handling."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from conftest import channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from platform_util import cache_count, loads, platform, platform_settings, user

from gen.common.v1 import Status as AppStatus
from gen.llm.v1 import LlmRequest, LlmServiceStub, ValidateDslRequest
from grpcstack import AsyncBaseServer
from grpcstack.testing import serve
from platform_services.llm.extractive import entities, sentences
from platform_services.llm.service import LlmService
from platform_services.server import PlatformServer
from platform_services.settings import PlatformSettings

pytestmark = pytest.mark.asyncio(loop_scope="module")
ME = user("alice")
VALIDATE = "/llm.v1.LLMService/ValidateDSL"
TEXT = (
    "Samsung Electronics (005930.KS) reported operating profit of 6.6조 원 on 2024년 4월 5일. "
    "Memory chip prices rose 15% in the quarter, and memory demand from AI servers stayed strong. "
    "Apple shares (NASDAQ: AAPL) fell 2.1% to $169.50 on 2024-04-05. "
    "Analysts said memory prices could keep rising through 2024."
)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PlatformServer]:
    srv = platform(tmp_path_factory.mktemp("llm"))
    async with serve(srv):
        yield srv


@pytest_asyncio.fixture(loop_scope="module")
async def stub(server: PlatformServer) -> AsyncIterator[LlmServiceStub]:
    async with channel(server) as ch:
        yield LlmServiceStub(ch)


async def test_entities_and_sentences() -> None:
    found = entities(TEXT)
    assert found["date_1"] == "2024년 4월 5일" and found["date_2"] == "2024-04-05"
    assert {found["percent_1"], found["percent_2"]} == {"15%", "2.1%"}
    assert set(v for k, v in found.items() if k.startswith("amount")) == {"6.6조 원", "$169.50"}
    assert set(v for k, v in found.items() if k.startswith("ticker")) == {"005930.KS", "AAPL"}
    assert len(sentences(TEXT)) == 4


async def test_analyze_text_is_extractive_and_says_so(stub: LlmServiceStub) -> None:
    reply = await stub.analyze_text(LlmRequest(text=TEXT, prompt="memory prices"), metadata=ME)
    assert reply.status == AppStatus.SUCCESS
    meta = reply.metadata.data
    assert meta["engine"] == "extractive" and "not a language model" in meta["engine_kind"]
    summary, phrases = reply.analysis.split("\nKey phrases: ")
    picked = [s for s in sentences(TEXT) if s in summary]
    assert len(picked) == 3 and "Memory chip prices rose 15%" in summary  # the prompt's topic
    assert phrases.split(", ")[0] == "memory"
    assert 0 < reply.confidence <= 1
    assert reply.entities == entities(TEXT)


async def test_stream_tokens_add_up_and_the_last_marks_completion(stub: LlmServiceStub) -> None:
    whole = await stub.analyze_text(LlmRequest(text=TEXT), metadata=ME)
    parts = [p async for p in stub.analyze_text_stream(LlmRequest(text=TEXT), metadata=ME)]
    assert len(parts) > 10
    assert [p.is_complete for p in parts] == [False] * (len(parts) - 1) + [True]
    assert "".join(p.token for p in parts) == whole.analysis


async def test_validate_dsl_positions_and_cache(
    server: PlatformServer, stub: LlmServiceStub
) -> None:
    ok = await stub.validate_dsl(
        ValidateDslRequest(expression="sma(close, 20) > sma(close, 50) and rsi(close, 14) < 70"),
        metadata=ME,
    )
    assert ok.valid and not ok.errors
    assert ok.functions == ["sma", "rsi"] and ok.fields == ["close"]
    expression = "rsi(close, 14) < 30 and\n  volum > 1e6 or macd(close, 26, 12, 9) > 0"
    before = loads(server, VALIDATE)
    hits = cache_count(server, "hits", VALIDATE, "l1")
    for _ in range(2):
        bad = await stub.validate_dsl(ValidateDslRequest(expression=expression), metadata=ME)
    assert loads(server, VALIDATE) == before + 1
    assert cache_count(server, "hits", VALIDATE, "l1") == hits + 1
    assert not bad.valid
    assert [(e.line, e.column, e.offset) for e in bad.errors] == [(2, 3, 26), (2, 30, 53)]
    assert "unknown name 'volum'" in bad.errors[0].message
    assert "fast (26) must be below slow (12)" in bad.errors[1].message
    syntax = await stub.validate_dsl(ValidateDslRequest(expression="close > (1 +"), metadata=ME)
    assert [(e.column, e.message) for e in syntax.errors] == [
        (13, "the rule ends where a value is expected")
    ]


@pytest.mark.parametrize(
    ("call", "request_", "fragment"),
    [
        ("analyze_text", LlmRequest(text="   "), "text: required"),
        ("analyze_text", LlmRequest(text="x" * 100_001), "text: 100001 characters"),
        ("validate_dsl", ValidateDslRequest(expression="1" * 5000), "expression: 5000"),
    ],
)
async def test_bad_input(stub: LlmServiceStub, call: str, request_: Any, fragment: str) -> None:
    with pytest.raises(GRPCError) as err:
        await getattr(stub, call)(request_, metadata=ME)
    assert err.value.status is Status.INVALID_ARGUMENT
    assert fragment in (err.value.message or "")
    with pytest.raises(GRPCError) as err:
        [p async for p in stub.analyze_text_stream(LlmRequest(text=""), metadata=ME)]
    assert err.value.status is Status.INVALID_ARGUMENT


async def test_grpcio_client(server: PlatformServer, pb2: Any) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = pb2.llm_grpc.LLMServiceStub(ch)
        md = (("user-id", "alice"),)
        parts = [
            p
            async for p in stub.AnalyzeTextStream(
                pb2.llm.LLMRequest(text=TEXT), metadata=md, timeout=30
            )
        ]
        assert parts[-1].is_complete and parts[0].token
        reply = await stub.ValidateDSL(
            pb2.llm.ValidateDSLRequest(expression="close >"), metadata=md, timeout=30
        )
        assert not reply.valid and reply.errors[0].column == 8
        whole = await stub.AnalyzeText(pb2.llm.LLMRequest(text=TEXT), metadata=md, timeout=30)
        assert whole.status == pb2.common.STATUS_SUCCESS
        assert "".join(p.token for p in parts) == whole.analysis
        assert dict(whole.entities) == entities(TEXT)


# --- the OpenAI-compatible engine ----------------------------------------------------------


class LlmServer(AsyncBaseServer):
    """The LLM service alone on the stack (with the platform's engine choice from settings)."""

    settings_class = PlatformSettings
    settings: PlatformSettings

    async def before_start(self) -> None:
        self.engine = PlatformServer._llm_engine(self)  # type: ignore[arg-type]

    def services(self) -> list[Any]:
        return [LlmService(self.engine)]

    async def after_stop(self) -> None:
        await self.engine.close()


def llm_server(tmp_path: Path, **overrides: Any) -> LlmServer:
    return LlmServer(platform_settings(tmp_path, **overrides))


# No model server can run here, so these speak the protocol from a small asyncio HTTP server:
# it checks the request the engine sends and streams server-sent events as vLLM/Ollama do.


class ChatCompletionsServer:
    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.requests: list[dict[str, Any]] = []
        self.headers: list[str] = []
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"

    async def __aenter__(self) -> ChatCompletionsServer:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        self.headers.append(head)
        length = int(
            next(
                h.split(":")[1]
                for h in head.split("\r\n")
                if h.lower().startswith("content-length")
            )
        )
        self.requests.append(json.loads(await reader.readexactly(length)))
        if self.mode == "error":
            body = b'{"error": "model not loaded"}'
            writer.write(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n%s" % (len(body), body)
            )
        else:
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
            )
            pieces = ["Memory ", "prices ", "are ", "rising."]
            for i, piece in enumerate(pieces):
                finish = "stop" if i == len(pieces) - 1 else None
                event = {"choices": [{"delta": {"content": piece}, "finish_reason": finish}]}
                writer.write(b": keep-alive\n\ndata: " + json.dumps(event).encode() + b"\n\n")
                if self.mode == "malformed" and i == 1:
                    writer.write(b"data: {not json\n\n")
                await writer.drain()
            writer.write(b"data: [DONE]\n\n")
        await writer.drain()
        writer.close()


async def test_openai_compatible_engine_streams_tokens(tmp_path: Path) -> None:
    async with ChatCompletionsServer() as llm:
        srv = llm_server(
            tmp_path, LLM_BASE_URL=llm.url, LLM_MODEL="qwen2.5:0.5b", LLM_API_KEY="secret-key"
        )
        async with serve(srv), channel(srv) as ch:
            stub = LlmServiceStub(ch)
            parts = [
                p
                async for p in stub.analyze_text_stream(
                    LlmRequest(text="What about memory?", prompt="Be brief."), metadata=ME
                )
            ]
            whole = await stub.analyze_text(LlmRequest(text="again"), metadata=ME)
    assert [p.token for p in parts] == ["Memory ", "prices ", "are ", "rising.", ""]
    assert parts[-1].is_complete
    assert whole.analysis == "Memory prices are rising."
    assert whole.metadata.data == {
        "engine": "openai-compatible",
        "model": "qwen2.5:0.5b",
        "finish_reason": "stop",
    }
    sent = llm.requests[0]
    assert sent["model"] == "qwen2.5:0.5b" and sent["stream"] is True
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What about memory?"},
    ]
    assert "POST /v1/chat/completions" in llm.headers[0]
    assert "authorization: Bearer secret-key" in llm.headers[0].lower().replace("bearer", "Bearer")


@pytest.mark.parametrize(
    ("mode", "fragment"),
    [
        ("error", "HTTP 503"),
        ("malformed", "malformed event"),
        ("down", "unreachable"),
    ],
)
async def test_openai_compatible_engine_failures(tmp_path: Path, mode: str, fragment: str) -> None:
    async with ChatCompletionsServer("ok" if mode == "down" else mode) as llm:
        url = llm.url
        if mode == "down":
            await llm.__aexit__()
            llm.server = None
        srv = llm_server(tmp_path, LLM_BASE_URL=url)
        async with serve(srv), channel(srv) as ch:
            stub = LlmServiceStub(ch)
            reply = await stub.analyze_text(LlmRequest(text="x"), metadata=ME)
            assert reply.status == AppStatus.FAILURE
            assert reply.error.code == "ENGINE_FAILED" and fragment in reply.error.message
            with pytest.raises(GRPCError) as err:
                [p async for p in stub.analyze_text_stream(LlmRequest(text="x"), metadata=ME)]
            assert err.value.status is Status.UNAVAILABLE
            assert fragment in (err.value.message or "")
        if mode == "down":
            llm.server = await asyncio.start_server(llm.handle, "127.0.0.1", 0)
