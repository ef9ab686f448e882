"""What a call made from inside a handler inherits from the call being served.

* deadline: the outgoing deadline is at most the incoming call's remaining time, so a chain of
  services never works past its first caller's deadline (an expired one fails at once with
  DEADLINE_EXCEEDED, nothing is sent);
* correlation id: forwarded as ``x-correlation-id`` unless the caller set one;
* identity: the client's own ``user-id`` / bearer token, when configured, on every call (added by
  the Client, not inherited: a service calls as itself).
"""

from __future__ import annotations

from ..context import CORRELATION_ID_KEY, current_call


def inherit(
    headers: list[tuple[str, str]],
    end: float | None,
    loop_now: float,
    *,
    deadline: bool = True,
    correlation_id: bool = True,
) -> float | None:
    """Add the served call's correlation id to ``headers`` and return the outgoing deadline (loop
    time) capped by the served call's; unchanged outside a call."""
    served = current_call()
    if served is None:
        return end
    if deadline and served.deadline is not None:
        inherited = loop_now + served.deadline.time_remaining()
        end = inherited if end is None else min(end, inherited)
    cid = served.correlation_id
    if correlation_id and cid is not None and all(k != CORRELATION_ID_KEY for k, _ in headers):
        headers.append((CORRELATION_ID_KEY, cid))
    return end
