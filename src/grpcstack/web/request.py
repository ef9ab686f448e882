"""What an HTTP request says beyond its body: headers as a map, the deadline, the request
encoding, and GET query values."""

from __future__ import annotations

from typing import Any

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from ..compression import GZIP, IDENTITY
from .protocol import Protocol, Wire

MAX_TIMEOUT_DIGITS = 10  # Connect-Timeout-Ms: at most 10 digits
Scope = dict[str, Any]


def timeout_seconds(protocol: Protocol, headers: dict[str, str]) -> float | None:
    if protocol.wire in (Wire.CONNECT_UNARY, Wire.CONNECT_STREAM):
        value = headers.get("connect-timeout-ms")
        if value is None:
            return None
        if not value.isdigit() or len(value) > MAX_TIMEOUT_DIGITS:
            raise GRPCError(Status.INVALID_ARGUMENT, "Invalid Connect-Timeout-Ms header")
        return int(value) / 1000
    value = headers.get("grpc-timeout")
    if value is None:
        return None
    units = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
    digits, unit = value[:-1], value[-1:]
    if not digits.isdigit() or len(digits) > 8 or unit not in units:
        raise GRPCError(Status.INVALID_ARGUMENT, "Invalid grpc-timeout header")
    return int(digits) * units[unit]


def request_encoding(protocol: Protocol, headers: dict[str, str]) -> str:
    name = {
        Wire.CONNECT_UNARY: "content-encoding",
        Wire.CONNECT_STREAM: "connect-content-encoding",
    }.get(protocol.wire, "grpc-encoding")
    encoding = headers.get(name, IDENTITY).strip().lower() or IDENTITY
    if encoding not in (GZIP, IDENTITY):
        raise GRPCError(Status.UNIMPLEMENTED, f"Unsupported {name} {encoding!r}")
    return encoding


def lists_gzip(value: str | None) -> bool:
    return bool(value) and GZIP in (p.split(";")[0].strip() for p in value.split(","))  # type: ignore[union-attr]


def header_map(scope: Scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in scope.get("headers", ()):
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        out[key] = f"{out[key]}, {text}" if key in out else text
    return out


def first(query: dict[str, list[str]], key: str, raw_bytes: bool = False) -> Any:
    values = query.get(key)
    if not values:
        return None
    return values[0].encode("latin-1") if raw_bytes else values[0]
