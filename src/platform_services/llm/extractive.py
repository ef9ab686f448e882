"""The offline analyzer: extractive, rule-based, deterministic. Not a language model.

It splits the text into sentences, scores words by frequency (stop words and very short words
left out), picks the top-scoring sentences in their original order as the summary, and finds
entities with patterns: amounts with a currency (USD, $, KRW, 원, 억, 만 ...), percentages,
dates (ISO, "2024년 3월 5일", "March 5, 2024"), tickers ($AAPL, 6-digit KRX codes, a capitalised
symbol followed by a listing hint). The summary streams word by word, like a model's tokens.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import AsyncIterator

from .engine import Analysis

MAX_SENTENCES = 3
MAX_PHRASES = 5

_SENTENCE = re.compile(r"(?<=[.!?。])\s+|(?<=다\.)\s*|\n{2,}")
_WORD = re.compile(r"[^\W\d_][\w'-]*", re.UNICODE)
_STOP = frozenset(
    """a an and are as at be been but by for from has have in into is it its of on or that the
    their this to was were will with which who what when where than then there these those they
    we you he she not no can could would should may might our your his her them also more most
    및 그리고 그러나 하지만 또한 등 이 그 저 것 수 있다 있는
    있습니다 했다 한다 합니다 위해 대한 에서 으로""".split()
)
_AMOUNT = re.compile(
    r"(?:(?:USD|KRW|EUR|JPY|US\$|\$|€|£|₩)\s?\d[\d,]*(?:\.\d+)?(?:\s?(?:million|billion|trillion|[mbkMBK]n?))?"
    r"|\d[\d,]*(?:\.\d+)?\s?(?:조|억|만)?\s?(?:원|달러|USD|KRW|EUR|dollars?))"
)
_PERCENT = re.compile(r"[-+]?\d+(?:\.\d+)?\s?(?:%|퍼센트|percent)")
_DATE = re.compile(
    r"\d{4}-\d{2}-\d{2}|\d{4}년\s?\d{1,2}월(?:\s?\d{1,2}일)?|\d{4}/\d{1,2}/\d{1,2}"
    r"|(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[a-z]*\.?\s\d{1,2},\s\d{4}"
)
_TICKER = re.compile(
    r"\$[A-Z]{1,5}\b|\b\d{6}(?=\.K[SQ]\b|\s?\((?:KOSPI|KOSDAQ)\))(?:\.K[SQ])?"
    r"|\b[A-Z]{1,5}(?=\s?\((?:NASDAQ|NYSE|AMEX|ticker)\))|(?<=NASDAQ: )[A-Z]{1,5}\b"
    r"|(?<=NYSE: )[A-Z]{1,5}\b"
)


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text) if s and s.strip()]


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text) if len(w) > 1 and w.lower() not in _STOP]


def entities(text: str) -> dict[str, str]:
    """Entity kind ("amount_1", "percent_1", "date_1", "ticker_1", ...) -> the text found."""
    found: dict[str, str] = {}
    taken: list[tuple[int, int]] = []
    for kind, pattern in (
        ("date", _DATE),
        ("percent", _PERCENT),
        ("amount", _AMOUNT),
        ("ticker", _TICKER),
    ):
        n = 0
        for m in pattern.finditer(text):
            if any(m.start() < end and start < m.end() for start, end in taken):
                continue  # a date's digits are not also an amount
            taken.append(m.span())
            n += 1
            found[f"{kind}_{n}"] = m.group().strip()
    return found


class ExtractiveAnalyzer:
    name = "extractive"

    async def analyze(self, text: str, prompt: str, analysis: Analysis) -> AsyncIterator[str]:
        parts = sentences(text)
        counts = Counter(words(text))
        focus = set(words(prompt))

        def score(sentence: str) -> float:
            ws = words(sentence)
            if not ws:
                return 0.0
            # words the prompt asks about count triple
            return sum(counts[w] * (3 if w in focus else 1) for w in ws) / len(ws) ** 0.5

        ranked = sorted(range(len(parts)), key=lambda i: -score(parts[i]))
        chosen = sorted(ranked[:MAX_SENTENCES])
        phrases = [w for w, _ in counts.most_common(MAX_PHRASES)]
        total = sum(counts.values()) or 1
        covered = sum(counts[w] for i in chosen for w in set(words(parts[i])))
        analysis.confidence = round(min(covered / total, 1.0), 4)
        analysis.entities = entities(text)
        analysis.metadata = {
            "engine": self.name,
            "engine_kind": "extractive summary and pattern entities (not a language model)",
            "sentences": str(len(parts)),
            "key_phrases": ", ".join(phrases),
        }
        summary = " ".join(parts[i] for i in chosen)
        if phrases:
            summary += ("\n" if summary else "") + "Key phrases: " + ", ".join(phrases)
        for token in re.findall(r"\S+\s*", summary):
            yield token

    async def close(self) -> None:
        return None
