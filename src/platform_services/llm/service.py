"""LLMService: AnalyzeText, AnalyzeTextStream (the last message has is_complete) and ValidateDSL.

Requests are checked first (text required, at most LLM_MAX_INPUT_CHARS); an engine failure
(an unreachable or misbehaving LLM server) is UNAVAILABLE for the stream and a STATUS_FAILURE
response with ErrorInfo for AnalyzeText, as the seed's service does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from grpclib.const import Status as GrpcStatus
from grpclib.exceptions import GRPCError

from gen.common.v1 import ErrorInfo, Metadata, Status
from gen.llm.v1 import (
    DslError,
    LlmRequest,
    LlmResponse,
    LlmServiceBase,
    LlmStreamResponse,
    ValidateDslRequest,
    ValidateDslResponse,
)
from grpcstack.cache import cached

from ..dsl import MAX_LENGTH, validate
from .engine import Analysis, AnalysisEngine, EngineError

SERVICE_NAME = "llm.v1.LLMService"
DSL_TTL_SECONDS = 600


class LlmService(LlmServiceBase):
    def __init__(self, engine: AnalysisEngine, *, max_input_chars: int = 100_000) -> None:
        self.engine = engine
        self.max_input_chars = max_input_chars

    def _check(self, message: LlmRequest) -> None:
        if not message.text.strip():
            raise GRPCError(GrpcStatus.INVALID_ARGUMENT, "text: required")
        if len(message.text) > self.max_input_chars:
            raise GRPCError(
                GrpcStatus.INVALID_ARGUMENT,
                f"text: {len(message.text)} characters, the limit is {self.max_input_chars}",
            )
        if len(message.prompt) > self.max_input_chars:
            raise GRPCError(GrpcStatus.INVALID_ARGUMENT, "prompt: too long")

    async def analyze_text(self, message: LlmRequest) -> LlmResponse:
        self._check(message)
        analysis = Analysis()
        try:
            pieces = [p async for p in self.engine.analyze(message.text, message.prompt, analysis)]
        except EngineError as exc:
            return LlmResponse(
                status=Status.FAILURE,
                error=ErrorInfo(code="ENGINE_FAILED", message=str(exc), details=self.engine.name),
            )
        return LlmResponse(
            status=Status.SUCCESS,
            analysis="".join(pieces),
            confidence=analysis.confidence,
            entities=analysis.entities,
            metadata=Metadata(data=analysis.metadata),
        )

    async def analyze_text_stream(self, message: LlmRequest) -> AsyncIterator[LlmStreamResponse]:
        self._check(message)
        analysis = Analysis()
        try:
            async for piece in self.engine.analyze(message.text, message.prompt, analysis):
                yield LlmStreamResponse(token=piece)
        except EngineError as exc:
            raise GRPCError(GrpcStatus.UNAVAILABLE, str(exc)) from None
        yield LlmStreamResponse(token="", is_complete=True)

    @cached(ttl=DSL_TTL_SECONDS, tiers=("l1", "l2"))
    async def validate_dsl(self, message: ValidateDslRequest) -> ValidateDslResponse:
        if len(message.expression) > MAX_LENGTH:
            raise GRPCError(
                GrpcStatus.INVALID_ARGUMENT,
                f"expression: {len(message.expression)} characters, the limit is {MAX_LENGTH}",
            )
        result = validate(message.expression)
        return ValidateDslResponse(
            valid=result.valid,
            errors=[
                DslError(line=e.line, column=e.column, offset=e.offset, message=e.message)
                for e in result.errors
            ],
            functions=result.functions,
            fields=result.fields,
        )
