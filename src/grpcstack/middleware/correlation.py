"""Metadata: the correlation id of every call.

Read from ``x-correlation-id`` when the client sent a valid one (at most 128 characters of
``[A-Za-z0-9._:-]``, so it is safe to log and to echo), otherwise generated. Handler code reads it
from the call context; ``grpcstack.context.outgoing_metadata()`` (and the stack's client) forward
it on calls made while serving; it is echoed back in the initial metadata, or in the trailers of
a trailers-only (error) response.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

from ..context import CORRELATION_ID_KEY
from .base import Middleware

if TYPE_CHECKING:
    from grpclib.events import RecvRequest

    from ..context import CallContext

_VALID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


_IDS_PER_DRAW = 256
_ids: list[str] = []


def new_correlation_id() -> str:
    """32 hex digits from os.urandom, as uuid4().hex (10x cheaper): drawn 256 ids at a time,
    since a getrandom() call per id costs more than the id."""
    try:
        return _ids.pop()
    except IndexError:  # empty (or emptied by another thread between a check and the pop)
        raw = os.urandom(16 * _IDS_PER_DRAW).hex()
        _ids.extend([raw[i : i + 32] for i in range(32, len(raw), 32)])
        return raw[:32]


# a forked worker must not hand out the ids its parent drew
os.register_at_fork(after_in_child=_ids.clear)


class CorrelationIdMiddleware(Middleware):
    name = "correlation"
    trusted = True

    def __init__(self, *, key: str = CORRELATION_ID_KEY, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.key = key

    def on_request(self, event: RecvRequest, call: CallContext) -> None:
        value = event.metadata.get(self.key)
        if isinstance(value, str) and _VALID.match(value):
            call.correlation_id = value
        else:
            value = call.correlation_id = new_correlation_id()
        # echoed as the call's own response header (no initial-metadata listener needed)
        call.add_response_headers([(self.key, value)])
