"""Logging: one structured JSON line per finished call, on the ``grpcstack.access`` logger.

Fields follow go-grpc-middleware's logging interceptor (grpc.service, grpc.method,
grpc.method_type, grpc.code, grpc.time_ms, peer.address) plus user_id, correlation_id and the
error class; never payloads. The level depends on the code as in go-grpc-middleware's
DefaultServerCodeToLevel. The line is assembled from pre-escaped parts (every variable field is
validated to a JSON-safe alphabet upstream) and handed to the logger without a stack walk.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from grpclib.const import Status

from ..context import GRPC_TYPES
from ..logs import BufferedStreamHandler
from .base import Middleware
from .metrics import GO_CODE_NAMES

if TYPE_CHECKING:
    from ..context import CallContext

_WARN = {
    Status.DEADLINE_EXCEEDED,
    Status.PERMISSION_DENIED,
    Status.RESOURCE_EXHAUSTED,
    Status.FAILED_PRECONDITION,
    Status.ABORTED,
    Status.OUT_OF_RANGE,
    Status.UNAVAILABLE,
}
_ERROR = {Status.UNKNOWN, Status.UNIMPLEMENTED, Status.INTERNAL, Status.DATA_LOSS}


def level_for(status: Status) -> int:
    if status in _ERROR:
        return logging.ERROR
    if status in _WARN:
        return logging.WARNING
    return logging.INFO  # OK, Canceled, InvalidArgument, NotFound, AlreadyExists, Unauthenticated


_LEVELS = {status: level_for(status) for status in Status}
_LEVEL_NAMES = {logging.INFO: "info", logging.WARNING: "warn", logging.ERROR: "error"}
_LOGGING_NAMES = {level: logging.getLevelName(level) for level in _LEVEL_NAMES}


def _q(value: str | None) -> str:
    """A JSON string literal; the common case (validated ids, addresses) needs no escaping."""
    if value is None:
        return "null"
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return f'"{value}"'
    return json.dumps(value)


class _RecordFactory:
    """LogRecords from a template: ``logging.LogRecord.__init__`` looks up the thread, process and
    task names on every call (~3 us); an access line needs none of them to differ per call."""

    def __init__(self, logger: logging.Logger) -> None:
        proto = logging.LogRecord(logger.name, logging.INFO, "", 0, "", (), None)
        self._template = dict(vars(proto))
        self._start = logging._startTime  # type: ignore[attr-defined]

    def __call__(self, level: int, line: str, now: float) -> logging.LogRecord:
        record = logging.LogRecord.__new__(logging.LogRecord)
        d = record.__dict__
        d.update(self._template)
        d["msg"] = line
        d["levelno"] = level
        d["levelname"] = _LOGGING_NAMES[level]
        d["created"] = now
        d["msecs"] = (now - int(now)) * 1000
        d["relativeCreated"] = (now - self._start) * 1000
        return record


class AccessLogMiddleware(Middleware):
    name = "logging"
    trusted = True

    def __init__(self, logger: logging.Logger | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.logger = logger or logging.getLogger("grpcstack.access")
        self._record = _RecordFactory(self.logger)
        self._prefix: dict[str, str] = {}

    def _prefix_for(self, call: CallContext) -> str:
        prefix = self._prefix.get(call.method)
        if prefix is None:
            prefix = self._prefix[call.method] = (
                f'"msg":"finished call","grpc.component":"server",'
                f'"grpc.service":{_q(call.service)},"grpc.method":{_q(call.method_name)},'
                f'"grpc.method_type":"{GRPC_TYPES[call.cardinality]}"'
            )
        return prefix

    def on_done(self, call: CallContext) -> None:
        status = call.status or Status.UNKNOWN
        level = _LEVELS[status]
        logger = self.logger
        if not logger.isEnabledFor(level):
            return
        exc = call.exception
        now = time.time()
        line = (
            f'{{"ts":{now:.6f},"level":"{_LEVEL_NAMES[level]}",{self._prefix_for(call)},'
            f'"grpc.code":"{GO_CODE_NAMES[status]}",'
            f'"grpc.time_ms":{(call.duration or 0.0) * 1000:.3f},'
            f'"peer.address":{_q(call.peer_address)},"user_id":{_q(call.user_id)},'
            f'"correlation_id":{_q(call.correlation_id)},'
            f'"error":{_q(type(exc).__name__ if exc is not None else None)}'
            f"{_protocol_field(call)}}}"
        )
        handlers = logger.handlers
        if handlers:
            handler = handlers[0]
            if type(handler) is BufferedStreamHandler and handler.takes_lines(logger, level):
                handler.write_line(line)  # what logger.handle would write, without a record
                return
        logger.handle(self._record(level, line, now))


def _protocol_field(call: CallContext) -> str:
    """Calls over the HTTP listener (grpcstack.web) say which protocol they came by."""
    return "" if call.protocol == "grpc" else f',"protocol":{_q(call.protocol)}'
