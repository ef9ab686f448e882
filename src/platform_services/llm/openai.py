"""An OpenAI-compatible streaming chat-completions client (vLLM, llama.cpp server, Ollama).

POST {LLM_BASE_URL}/chat/completions with ``stream: true`` and read the server-sent events:
each ``data: {...}`` line carries ``choices[0].delta.content``; ``data: [DONE]`` ends it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from .engine import Analysis, EngineError

SYSTEM_PROMPT = (
    "You analyse financial text. Answer with a short analysis of the text the user gives."
)


class OpenAiCompatibleEngine:
    name = "openai-compatible"

    def __init__(
        self, base_url: str, model: str, *, api_key: str | None = None, timeout: float = 120.0
    ) -> None:
        import httpx

        headers = {"Accept": "text/event-stream"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.model = model
        self.base_url = base_url.rstrip("/")
        self._client = httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=httpx.Timeout(timeout, connect=5.0)
        )

    async def analyze(self, text: str, prompt: str, analysis: Analysis) -> AsyncIterator[str]:
        import httpx

        body: dict[str, Any] = {
            "model": self.model,
            "stream": True,
            "messages": [
                {"role": "system", "content": prompt or SYSTEM_PROMPT},
                {"role": "user", "content": text},
            ],
        }
        analysis.metadata = {"engine": self.name, "model": self.model}
        finish = ""
        try:
            async with self._client.stream("POST", "/chat/completions", json=body) as response:
                if response.status_code != 200:
                    detail = (await response.aread())[:200].decode(errors="replace")
                    raise EngineError(f"LLM server answered HTTP {response.status_code}: {detail}")
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue  # comments, event names, keep-alives
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    try:
                        event = json.loads(data)
                        choice = event["choices"][0]
                    except (ValueError, KeyError, IndexError, TypeError):
                        raise EngineError("LLM server sent a malformed event") from None
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        yield piece
                    finish = choice.get("finish_reason") or finish
        except httpx.HTTPError as exc:
            raise EngineError(f"LLM server unreachable: {type(exc).__name__}") from None
        analysis.metadata["finish_reason"] = finish or "unknown"
        # a model's own confidence is not reported by the API: say so rather than invent one
        analysis.confidence = 0.0

    async def close(self) -> None:
        await self._client.aclose()
