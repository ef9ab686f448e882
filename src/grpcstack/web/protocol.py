"""Which protocol a request speaks, and the Connect protocol's names for gRPC statuses.

One listener serves three protocols, told apart by method and content type as connect-go does:

* Connect unary: ``POST`` with ``application/json`` or ``application/proto`` (or ``GET`` with
  ``?connect=v1&encoding=...&message=...`` for methods marked ``NO_SIDE_EFFECTS``);
* Connect streaming: ``application/connect+json`` / ``application/connect+proto``;
* gRPC-Web: ``application/grpc-web[+proto]`` and ``application/grpc-web-text[+proto]`` (base64).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from grpclib.const import Status


class Wire(enum.Enum):
    CONNECT_UNARY = "connect-unary"
    CONNECT_STREAM = "connect-stream"
    GRPC_WEB = "grpc-web"
    GRPC_WEB_TEXT = "grpc-web-text"


@dataclass(frozen=True)
class Protocol:
    wire: Wire
    #: "json" or "proto"
    codec: str

    @property
    def label(self) -> str:
        """The metrics/log label: connect, grpc-web."""
        return "grpc-web" if self.wire in (Wire.GRPC_WEB, Wire.GRPC_WEB_TEXT) else "connect"

    @property
    def streaming(self) -> bool:
        return self.wire is not Wire.CONNECT_UNARY


_CONTENT_TYPES: dict[str, Protocol] = {
    "application/json": Protocol(Wire.CONNECT_UNARY, "json"),
    "application/proto": Protocol(Wire.CONNECT_UNARY, "proto"),
    "application/connect+json": Protocol(Wire.CONNECT_STREAM, "json"),
    "application/connect+proto": Protocol(Wire.CONNECT_STREAM, "proto"),
    "application/grpc-web": Protocol(Wire.GRPC_WEB, "proto"),
    "application/grpc-web+proto": Protocol(Wire.GRPC_WEB, "proto"),
    "application/grpc-web+json": Protocol(Wire.GRPC_WEB, "json"),
    "application/grpc-web-text": Protocol(Wire.GRPC_WEB_TEXT, "proto"),
    "application/grpc-web-text+proto": Protocol(Wire.GRPC_WEB_TEXT, "proto"),
    "application/grpc-web-text+json": Protocol(Wire.GRPC_WEB_TEXT, "json"),
}

GET_ENCODINGS = {"json": "json", "proto": "proto"}


def detect(content_type: str) -> Protocol | None:
    """The protocol of a POST with this Content-Type, None when it is none of ours."""
    base = content_type.split(";", 1)[0].strip().lower()
    return _CONTENT_TYPES.get(base)


#: Connect's code names (connectrpc.com/docs/protocol, "Error Codes")
CODE_NAMES: dict[Status, str] = {
    Status.CANCELLED: "canceled",
    Status.UNKNOWN: "unknown",
    Status.INVALID_ARGUMENT: "invalid_argument",
    Status.DEADLINE_EXCEEDED: "deadline_exceeded",
    Status.NOT_FOUND: "not_found",
    Status.ALREADY_EXISTS: "already_exists",
    Status.PERMISSION_DENIED: "permission_denied",
    Status.RESOURCE_EXHAUSTED: "resource_exhausted",
    Status.FAILED_PRECONDITION: "failed_precondition",
    Status.ABORTED: "aborted",
    Status.OUT_OF_RANGE: "out_of_range",
    Status.UNIMPLEMENTED: "unimplemented",
    Status.INTERNAL: "internal",
    Status.UNAVAILABLE: "unavailable",
    Status.DATA_LOSS: "data_loss",
    Status.UNAUTHENTICATED: "unauthenticated",
}

#: the HTTP status of a Connect unary error, per the spec's table
HTTP_STATUS: dict[Status, int] = {
    Status.CANCELLED: 499,
    Status.UNKNOWN: 500,
    Status.INVALID_ARGUMENT: 400,
    Status.DEADLINE_EXCEEDED: 504,
    Status.NOT_FOUND: 404,
    Status.ALREADY_EXISTS: 409,
    Status.PERMISSION_DENIED: 403,
    Status.RESOURCE_EXHAUSTED: 429,
    Status.FAILED_PRECONDITION: 400,
    Status.ABORTED: 409,
    Status.OUT_OF_RANGE: 400,
    Status.UNIMPLEMENTED: 501,
    Status.INTERNAL: 500,
    Status.UNAVAILABLE: 503,
    Status.DATA_LOSS: 500,
    Status.UNAUTHENTICATED: 401,
}

#: request headers that are protocol, not call metadata
RESERVED_HEADERS = frozenset(
    {
        "host",
        "connection",
        "content-type",
        "content-length",
        "content-encoding",
        "accept",
        "accept-encoding",
        "transfer-encoding",
        "te",
        "user-agent",
        "upgrade",
        "http2-settings",
        "keep-alive",
        "origin",
        "referer",
        "x-grpc-web",
        "x-user-agent",
    }
)
RESERVED_PREFIXES = ("connect-", "grpc-", ":", "access-control-", "sec-")
