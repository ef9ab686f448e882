"""What a call made from inside a handler inherits from the call being served.

* deadline: the outgoing deadline is at most the incoming call's remaining time, so a chain of
  services never works past its first caller's deadline (an expired one fails at once with
  DEADLINE_EXCEEDED, nothing is sent);
* correlation id: forwarded as ``x-correlation-id`` unless the caller set one;
* identity: by default the client's own ``user-id`` / bearer token, when configured, on every
  call (a service calls as itself). With GRPC_CLIENT_FORWARD_IDENTITY the served call's
  ``user-id`` and ``authorization`` go instead when it has either (a service calls on behalf of
  its caller); metadata given to the call itself still wins.
"""

from __future__ import annotations

from ..context import CORRELATION_ID_KEY, current_call

#: the metadata that says who calls, forwarded by GRPC_CLIENT_FORWARD_IDENTITY
IDENTITY_KEYS = ("user-id", "authorization")


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


def forward_identity(
    static: list[tuple[str, str]], given: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """``static`` (the client's own metadata) with the served call's ``user-id`` and
    ``authorization`` in place of the client's identity, except a key in ``given`` (the call's
    own metadata, which wins); ``static`` itself outside a call or when the served call has
    neither. The client's identity goes as a whole: a caller's user-id never travels with the
    service's own token."""
    served = current_call()
    if served is None:
        return static
    metadata = served.metadata
    forwarded: list[tuple[str, str]] = []
    for key in IDENTITY_KEYS:
        value = metadata.get(key)
        if isinstance(value, str) and all(k != key for k, _ in given):
            forwarded.append((key, value))
    if not forwarded:
        return static
    return [h for h in static if h[0] not in IDENTITY_KEYS] + forwarded
