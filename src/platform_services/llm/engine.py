"""The engine interface of the LLM service: a stream of text pieces plus what was found.

Two engines: :class:`~.openai.OpenAiCompatibleEngine` (any server speaking OpenAI's streaming
chat completions: vLLM, llama.cpp's server, Ollama) when LLM_BASE_URL is set, and
:class:`~.extractive.ExtractiveAnalyzer`, the offline default. The latter is NOT a language
model: it selects sentences and key phrases and finds entities with rules, so its output is a
summary assembled from the input text.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol


class EngineError(Exception):
    """The engine could not answer (unreachable, refused, malformed reply)."""


@dataclass
class Analysis:
    """Filled in by the engine while it streams; complete when the stream ends."""

    confidence: float = 0.0
    entities: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)


class AnalysisEngine(Protocol):
    name: str

    def analyze(self, text: str, prompt: str, analysis: Analysis) -> AsyncIterator[str]:
        """Yield the analysis text in pieces (tokens); fill ``analysis`` on the way."""
        ...

    async def close(self) -> None: ...
