"""ErrorHandling: exceptions from handlers become gRPC statuses (all four cardinalities).

``GRPCError`` passes through with its message and details. Mapped exception types get their
status; the message is the exception's own text only where the type says it is meant for the
caller (ValueError), a fixed text otherwise. Anything else is INTERNAL with a generic message;
the traceback is logged server-side with the correlation id and never sent.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from ..context import current_call
from .base import HandlerFunc, Middleware

if TYPE_CHECKING:
    from grpclib.const import Handler

log = logging.getLogger("grpcstack.errors")

#: message for the client: a fixed text, or a function of the exception
Message = str | Callable[[BaseException], str]


@dataclass(frozen=True)
class ErrorRule:
    status: Status
    message: Message
    log_traceback: bool = False


def _own_text(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


DEFAULT_RULES: dict[type[BaseException], ErrorRule] = {
    ValueError: ErrorRule(Status.INVALID_ARGUMENT, _own_text),
    PermissionError: ErrorRule(Status.PERMISSION_DENIED, "permission denied"),
    FileNotFoundError: ErrorRule(Status.NOT_FOUND, "not found"),
    KeyError: ErrorRule(Status.NOT_FOUND, "not found"),
    TimeoutError: ErrorRule(Status.DEADLINE_EXCEEDED, "operation timed out"),
    NotImplementedError: ErrorRule(Status.UNIMPLEMENTED, "not implemented"),
}
INTERNAL = ErrorRule(Status.INTERNAL, "Internal error", log_traceback=True)

#: rules for optional dependencies, by qualified class name (their modules are never imported here)
DEFAULT_NAMED_RULES: dict[str, ErrorRule] = {
    "pymongo.errors.ConnectionFailure": ErrorRule(
        Status.UNAVAILABLE, "MongoDB is unavailable, retry later", log_traceback=False
    ),
    "redis.exceptions.ConnectionError": ErrorRule(
        Status.UNAVAILABLE, "Redis is unavailable, retry later"
    ),
    "redis.exceptions.TimeoutError": ErrorRule(Status.UNAVAILABLE, "Redis timed out, retry later"),
}


class ErrorHandlingMiddleware(Middleware):
    name = "errors"
    trusted = True

    def __init__(
        self,
        rules: dict[type[BaseException], ErrorRule] | None = None,
        *,
        error_map: Mapping[type[BaseException], Status | tuple[Status, str]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.rules = dict(DEFAULT_RULES if rules is None else rules)
        self.named_rules = dict(DEFAULT_NAMED_RULES)
        for exc_type, target in (error_map or {}).items():
            status, message = target if isinstance(target, tuple) else (target, None)
            if not (isinstance(exc_type, type) and issubclass(exc_type, BaseException)):
                raise TypeError(f"error_map key {exc_type!r} is not an exception class")
            if not isinstance(status, Status):
                raise TypeError(
                    f"error_map[{exc_type.__name__}] must be a grpclib.const.Status "
                    f"(or (Status, message)), got {status!r}"
                )
            self.register(exc_type, status, message)

    def register(
        self, exc_type: type[BaseException], status: Status, message: Message | None = None
    ) -> None:
        """Map ``exc_type`` (and its subclasses) to ``status``; the most specific type wins."""
        self.rules[exc_type] = ErrorRule(status, message if message is not None else _own_text)

    def rule_for(self, exc: BaseException) -> ErrorRule:
        for klass in type(exc).__mro__:
            rule = self.rules.get(klass) or self.named_rules.get(
                f"{klass.__module__}.{klass.__qualname__}"
            )
            if rule is not None:
                return rule
        return INTERNAL

    def wrap(self, func: HandlerFunc, method: str, handler: Handler) -> HandlerFunc:
        @functools.wraps(func)
        async def handle_errors(stream: Any) -> None:
            try:
                await func(stream)
            except (GRPCError, StreamTerminatedError, asyncio.CancelledError):
                raise
            except Exception as exc:
                raise self.to_grpc_error(exc, method) from None

        return handle_errors

    def to_grpc_error(self, exc: Exception, method: str) -> GRPCError:
        rule = self.rule_for(exc)
        call = current_call()
        if call is not None:
            call.exception = exc
        cid = call.correlation_id if call is not None else None
        if rule.log_traceback:
            log.error(
                "unhandled %s in %s (correlation_id=%s)",
                type(exc).__name__,
                method,
                cid,
                exc_info=exc,
            )
        message = rule.message(exc) if callable(rule.message) else rule.message
        return GRPCError(rule.status, message)
