"""The strategy rule DSL: a tokenizer and recursive-descent parser with positioned errors.

A rule is a boolean expression over price fields and indicator calls::

    sma(close, 20) > sma(close, 50) and rsi(close, 14) < 70
    crosses_above(ema(close, 12), ema(close, 26)) or not (close < bollinger_lower(close, 20, 2))

Grammar (lowest precedence first)::

    rule       := or
    or         := and ("or" and)*
    and        := not ("and" not)*
    not        := "not" not | comparison
    comparison := sum (("<" | "<=" | ">" | ">=" | "==" | "!=") sum)?
    sum        := product (("+" | "-") product)*
    product    := unary (("*" | "/") unary)*
    unary      := "-" unary | primary
    primary    := NUMBER | FIELD | NAME "(" args ")" | "(" or ")" | "true" | "false"

Syntax errors stop the parse (the first one is reported); type and argument errors are collected
so a user sees all of them at once. Every error carries its line, column and offset.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["number", "series", "bool"]

FIELDS = frozenset({"open", "high", "low", "close", "volume"})
MAX_LENGTH = 4096


@dataclass(frozen=True)
class Function:
    """An indicator call: the first argument is a series, the rest integer/float literals."""

    params: tuple[str, ...]  # after the series argument
    integer: tuple[bool, ...]  # which of params must be whole numbers
    returns: Kind = "series"
    series_args: int = 1


FUNCTIONS: dict[str, Function] = {
    "sma": Function(("period",), (True,)),
    "ema": Function(("period",), (True,)),
    "rsi": Function(("period",), (True,)),
    "macd": Function(("fast", "slow", "signal"), (True, True, True)),
    "macd_signal": Function(("fast", "slow", "signal"), (True, True, True)),
    "bollinger_upper": Function(("period", "num_std"), (True, False)),
    "bollinger_lower": Function(("period", "num_std"), (True, False)),
    "highest": Function(("period",), (True,)),
    "lowest": Function(("period",), (True,)),
    "crosses_above": Function((), (), returns="bool", series_args=2),
    "crosses_below": Function((), (), returns="bool", series_args=2),
}


@dataclass(frozen=True)
class DslError:
    offset: int
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}, column {self.column}: {self.message}"


@dataclass
class Validation:
    errors: list[DslError] = field(default_factory=list)
    functions: list[str] = field(default_factory=list)
    fields: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.errors


@dataclass(frozen=True)
class Token:
    kind: str  # number, name, op, lparen, rparen, comma, end
    text: str
    offset: int


_TOKEN = re.compile(
    r"(?P<ws>\s+)|(?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op><=|>=|==|!=|[<>+\-*/])|(?P<lparen>\()|(?P<rparen>\))|(?P<comma>,)"
)
_KEYWORDS = frozenset({"and", "or", "not", "true", "false"})


class _SyntaxError(Exception):
    def __init__(self, offset: int, message: str) -> None:
        super().__init__(message)
        self.offset = offset
        self.message = message


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise _SyntaxError(pos, f"unexpected character {text[pos]!r}")
        kind = m.lastgroup
        assert kind is not None
        if kind != "ws":
            tokens.append(Token(kind, m.group(), pos))
        pos = m.end()
    tokens.append(Token("end", "", len(text)))
    return tokens


class _Parser:
    def __init__(self, text: str, result: Validation) -> None:
        self.tokens = tokenize(text)
        self.i = 0
        self.result = result
        self.semantic: list[tuple[int, str]] = []

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def expect(self, kind: str, what: str) -> Token:
        if self.tok.kind != kind:
            raise _SyntaxError(self.tok.offset, f"expected {what}, found {_shown(self.tok)}")
        return self.take()

    def is_word(self, word: str) -> bool:
        return self.tok.kind == "name" and self.tok.text.lower() == word

    def error(self, offset: int, message: str) -> None:
        self.semantic.append((offset, message))

    def need(self, kind: Kind, got: Kind, offset: int, role: str) -> None:
        ok = got == kind or (kind == "series" and got == "number")  # a constant is a flat series
        if not ok:
            self.error(offset, f"{role} must be a {_KIND_NAMES[kind]}, not a {_KIND_NAMES[got]}")

    # --- grammar ---------------------------------------------------------------------------

    def rule(self) -> None:
        start = self.tok.offset
        if self.tok.kind == "end":
            raise _SyntaxError(start, "the rule is empty")
        kind = self.or_()
        if self.tok.kind != "end":
            raise _SyntaxError(self.tok.offset, f"unexpected {_shown(self.tok)}")
        if kind != "bool":
            self.error(start, f"a rule must be a condition (true/false), not a {_KIND_NAMES[kind]}")

    def or_(self) -> Kind:
        start = self.tok.offset
        kind = self.and_()
        while self.is_word("or"):
            op = self.take()
            self.need("bool", kind, start, "the left side of 'or'")
            right_at = self.tok.offset
            self.need("bool", self.and_(), right_at, f"the right side of {op.text!r}")
            kind = "bool"
        return kind

    def and_(self) -> Kind:
        start = self.tok.offset
        kind = self.not_()
        while self.is_word("and"):
            op = self.take()
            self.need("bool", kind, start, "the left side of 'and'")
            right_at = self.tok.offset
            self.need("bool", self.not_(), right_at, f"the right side of {op.text!r}")
            kind = "bool"
        return kind

    def not_(self) -> Kind:
        if self.is_word("not"):
            self.take()
            at = self.tok.offset
            self.need("bool", self.not_(), at, "the operand of 'not'")
            return "bool"
        return self.comparison()

    def comparison(self) -> Kind:
        start = self.tok.offset
        kind = self.sum()
        if self.tok.kind == "op" and self.tok.text in ("<", "<=", ">", ">=", "==", "!="):
            op = self.take()
            self.need("series", kind, start, f"the left side of {op.text!r}")
            right_at = self.tok.offset
            self.need("series", self.sum(), right_at, f"the right side of {op.text!r}")
            if self.tok.kind == "op" and self.tok.text in ("<", "<=", ">", ">=", "==", "!="):
                raise _SyntaxError(
                    self.tok.offset, "comparisons cannot be chained: join them with 'and'"
                )
            return "bool"
        return kind

    def sum(self) -> Kind:
        return self._binary(self.product, ("+", "-"))

    def product(self) -> Kind:
        return self._binary(self.unary, ("*", "/"))

    def _binary(self, parse: Callable[[], Kind], ops: tuple[str, ...]) -> Kind:
        start = self.tok.offset
        kind = parse()
        while self.tok.kind == "op" and self.tok.text in ops:
            op = self.take()
            self.need("series", kind, start, f"the left side of {op.text!r}")
            right_at = self.tok.offset
            right = parse()
            self.need("series", right, right_at, f"the right side of {op.text!r}")
            kind = "number" if kind == right == "number" else "series"
        return kind

    def unary(self) -> Kind:
        if self.tok.kind == "op" and self.tok.text == "-":
            self.take()
            at = self.tok.offset
            kind = self.unary()
            self.need("series", kind, at, "the operand of '-'")
            return kind if kind != "bool" else "series"
        return self.primary()

    def primary(self) -> Kind:
        tok = self.tok
        if tok.kind == "number":
            self.take()
            return "number"
        if tok.kind == "lparen":
            self.take()
            kind = self.or_()
            self.expect("rparen", "')'")
            return kind
        if tok.kind == "name":
            name = tok.text.lower()
            if name in ("true", "false"):
                self.take()
                return "bool"
            if name in _KEYWORDS:
                raise _SyntaxError(tok.offset, f"expected a value, found the keyword {name!r}")
            self.take()
            if self.tok.kind == "lparen":
                return self.call(tok)
            if name in FIELDS:
                if name not in self.result.fields:
                    self.result.fields.append(name)
                return "series"
            if name in FUNCTIONS:
                self.error(tok.offset, f"{name} is a function: call it as {name}(...)")
                return FUNCTIONS[name].returns
            self.error(
                tok.offset, f"unknown name {tok.text!r} (fields: {', '.join(sorted(FIELDS))})"
            )
            return "series"
        if tok.kind == "end":
            raise _SyntaxError(tok.offset, "the rule ends where a value is expected")
        raise _SyntaxError(tok.offset, f"expected a value, found {_shown(tok)}")

    def call(self, name_tok: Token) -> Kind:
        self.take()  # (
        args: list[tuple[int, Kind, float | None]] = []
        if self.tok.kind != "rparen":
            while True:
                at, first = self.tok.offset, self.i
                literal, length = self._literal()
                kind = self.or_()
                args.append((at, kind, literal if self.i - first == length else None))
                if self.tok.kind == "comma":
                    self.take()
                    continue
                break
        self.expect("rparen", "',' or ')'")
        name = name_tok.text.lower()
        func = FUNCTIONS.get(name)
        if func is None:
            self.error(
                name_tok.offset,
                f"unknown function {name_tok.text!r} (known: {', '.join(sorted(FUNCTIONS))})",
            )
            return "series"
        if name not in self.result.functions:
            self.result.functions.append(name)
        expected = func.series_args + len(func.params)
        if len(args) != expected:
            names = ["series"] * func.series_args + list(func.params)
            self.error(
                name_tok.offset,
                f"{name} takes {expected} argument(s) ({', '.join(names)}), got {len(args)}",
            )
            return func.returns
        for at, kind, _ in args[: func.series_args]:
            self.need("series", kind, at, f"the series argument of {name}")
        for (at, kind, value), param, whole in zip(
            args[func.series_args :], func.params, func.integer, strict=True
        ):
            if kind != "number" or value is None:
                self.error(at, f"{name}: {param} must be a number literal")
            elif value <= 0:
                self.error(at, f"{name}: {param} must be positive, got {value:g}")
            elif whole and value != int(value):
                self.error(at, f"{name}: {param} must be a whole number, got {value:g}")
        if name.startswith("macd") and len(args) == 4:
            fast, slow = args[1][2], args[2][2]
            if fast is not None and slow is not None and fast >= slow:
                self.error(args[1][0], f"{name}: fast ({fast:g}) must be below slow ({slow:g})")
        return func.returns

    def _literal(self) -> tuple[float | None, int]:
        """(value, tokens) when the next argument is a lone, maybe negated, number literal."""
        sign, i = 1.0, self.i
        if self.tokens[i].kind == "op" and self.tokens[i].text == "-":
            sign, i = -1.0, i + 1
        tok = self.tokens[i]
        if tok.kind == "number" and self.tokens[i + 1].kind in ("comma", "rparen"):
            return sign * float(tok.text), i + 1 - self.i
        return None, 0


_KIND_NAMES: dict[Kind, str] = {"number": "number", "series": "value", "bool": "condition"}


def _shown(tok: Token) -> str:
    return "the end of the rule" if tok.kind == "end" else repr(tok.text)


def _position(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, column


def validate(text: str) -> Validation:
    """Parse and check a rule; never raises for bad input."""
    result = Validation()
    if len(text) > MAX_LENGTH:
        result.errors.append(DslError(MAX_LENGTH, *_position(text, MAX_LENGTH), "rule too long"))
        return result
    problems: list[tuple[int, str]] = []
    try:
        parser = _Parser(text, result)
        try:
            parser.rule()
        finally:
            problems.extend(parser.semantic)
    except _SyntaxError as exc:
        problems.append((exc.offset, exc.message))
    except RecursionError:
        problems.append((0, "the rule is nested too deeply"))
    for offset, message in sorted(problems, key=lambda p: p[0]):
        result.errors.append(DslError(offset, *_position(text, offset), message))
    return result
