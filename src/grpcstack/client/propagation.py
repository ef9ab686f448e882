"""What a call made from inside a handler inherits from the call being served.

* deadline: the outgoing deadline is at most the incoming call's remaining time, so a chain of
  services never works past its first caller's deadline (an expired one fails at once with
  DEADLINE_EXCEEDED, nothing is sent);
* correlation id: forwarded as ``x-correlation-id`` unless the caller set one;
* identity: the client's own ``user-id`` / bearer token, when configured, on every call.
"""

from __future__ import annotations

from ..context import CORRELATION_ID_KEY, current_call


def incoming_remaining() -> float | None:
    """Seconds left of the call being served by this task, None outside a call or without one."""
    call = current_call()
    if call is None or call.deadline is None:
        return None
    return call.deadline.time_remaining()


def incoming_correlation_id() -> str | None:
    call = current_call()
    return call.correlation_id if call is not None else None


__all__ = ["CORRELATION_ID_KEY", "incoming_correlation_id", "incoming_remaining"]
