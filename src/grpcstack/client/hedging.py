"""Hedging (gRFC A6) for idempotent unary methods: send the request again every
``hedging_delay`` while no answer came, up to ``max_attempts`` copies, take the first OK (or
fatal) answer and cancel the rest. A non-fatal failure sends the next copy at once. Hedges are
attempts of one call: the client middleware sees one call, with ``attempts`` counting copies,
and the retry throttle applies to every copy after the first.
"""

from __future__ import annotations

import asyncio
import copy
from typing import TYPE_CHECKING, Any

from grpclib.exceptions import GRPCError

from .middleware import NO_HOOKS

if TYPE_CHECKING:
    from collections.abc import Callable

    from grpclib.metadata import Deadline

    from .call import ClientCall
    from .spec import ClientLike, MethodSpec

    NewCall = Callable[[MethodSpec, float | None, Deadline | None, Any], ClientCall]


async def hedged(
    client: ClientLike,
    new_call: NewCall,
    spec: MethodSpec,
    request: Any,
    timeout: float | None,  # noqa: ASYNC109 - the stub API's name
    deadline: Deadline | None,
    metadata: Any,
) -> Any:
    policy = spec.hedging
    assert policy is not None
    copy_spec = copy.copy(spec)
    copy_spec.hedging = None
    copy_spec.retry = None
    copy_spec.hooks = NO_HOOKS
    outer = new_call(spec, timeout, deadline, metadata)
    outer._begin()
    info = outer.info
    pending: set[asyncio.Future[Any]] = set()
    last_error: BaseException | None = None

    def launch() -> None:
        call = new_call(copy_spec, None, None, metadata)
        call.info.deadline = info.deadline
        call._metadata_headers = outer._metadata_headers
        info.attempts += 1
        if info.attempts > 1:
            for hook in spec.hooks.on_attempt:
                hook(info, info.attempts, False)
        pending.add(asyncio.ensure_future(call.unary(request)))

    try:
        launch()
        while pending:
            can_hedge = info.attempts < policy.max_attempts and (
                client.throttle is None or client.throttle.allows_retry
            )
            done, _ = await asyncio.wait(
                pending,
                timeout=policy.hedging_delay if can_hedge else None,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if not done:
                launch()
                continue
            for task in done:
                pending.discard(task)
                error = task.exception()
                if error is None:
                    result = task.result()
                    outer._finish(None)
                    return result
                fatal = not (
                    isinstance(error, GRPCError) and error.status in policy.non_fatal_status_codes
                )
                if fatal:
                    raise error
                last_error = error
                if can_hedge:
                    launch()
        assert last_error is not None
        raise last_error
    except BaseException as exc:
        outer._finish(exc)
        raise
    finally:
        for task in pending:
            task.cancel()
