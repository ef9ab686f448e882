"""The per-call context: what handler code can know about the call it is serving.

Handlers receive only the request message; everything else (method, peer, deadline, metadata, the
authenticated user, the correlation id) is read from here::

    from grpcstack.context import current_call

    async def get_thing(self, message):
        call = current_call()
        log.info("%s asked by %s", call.method, call.user_id)

The context is created by the server for every call, in the call's own task, before any
middleware runs, so contextvars flow to the handler and to everything it awaits.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from grpclib.const import Cardinality, Status
from grpclib.metadata import encode_metadata

if TYPE_CHECKING:
    from grpclib.metadata import Deadline, _Metadata
    from grpclib.protocol import Peer

GRPC_TYPES = {
    Cardinality.UNARY_UNARY: "unary",
    Cardinality.UNARY_STREAM: "server_stream",
    Cardinality.STREAM_UNARY: "client_stream",
    Cardinality.STREAM_STREAM: "bidi_stream",
}

CORRELATION_ID_KEY = "x-correlation-id"


class CallContext:
    """State of one call. Middlewares write it; handlers read it."""

    __slots__ = (
        "cardinality",
        "chain",
        "compress_response",
        "correlation_id",
        "deadline",
        "depth",
        "duration",
        "exception",
        "extra",
        "initial_metadata_sent",
        "metadata",
        "method",
        "method_name",
        "msg_received",
        "msg_sent",
        "peer",
        "peer_cancelled",
        "protocol",
        "request_compressed",
        "response_initial_metadata",
        "response_trailing_metadata",
        "service",
        "start",
        "status",
        "status_message",
        "user_id",
    )

    def __init__(
        self,
        method: str,
        cardinality: Cardinality,
        metadata: _Metadata,
        peer: Peer | None,
        deadline: Deadline | None,
    ) -> None:
        #: full method path, "/package.Service/Method"
        self.method = method
        _, self.service, self.method_name = method.split("/", 2)
        self.cardinality = cardinality
        #: request (invocation) metadata, a multidict
        self.metadata = metadata
        self.peer = peer
        self.deadline = deadline
        self.start = time.perf_counter()
        #: seconds from arrival to the end of the call, set when it ends
        self.duration: float | None = None
        self.user_id: str | None = None
        self.correlation_id: str | None = None
        #: final status, known once trailers were sent (or the call was cancelled)
        self.status: Status | None = None
        self.status_message: str | None = None
        self.exception: BaseException | None = None
        self.initial_metadata_sent = False
        self.peer_cancelled = False
        #: whether the last request message arrived compressed
        self.request_compressed = False
        #: compress the response messages sent from now on: True/False, None = server default
        #: (GRPC_COMPRESSION); only when the client accepts gzip
        self.compress_response: bool | None = None
        #: number of middlewares whose on_request was entered (onion semantics)
        self.depth = 0
        #: metric children counting messages (set by the metrics middleware)
        self.msg_received: Any = None
        self.msg_sent: Any = None
        #: the wire protocol: "grpc", or "connect" / "grpc-web" on the HTTP listener
        self.protocol = "grpc"
        #: free-form per-call state for custom middleware
        self.extra: dict[str, Any] = {}
        #: metadata the handler adds to its response (add_initial/trailing_metadata)
        self.response_initial_metadata: list[tuple[str, str | bytes]] | None = None
        self.response_trailing_metadata: list[tuple[str, str | bytes]] | None = None
        #: the middleware chain serving the call (set by it; None in unit tests)
        self.chain: Any = None

    @property
    def grpc_type(self) -> str:
        return GRPC_TYPES[self.cardinality]

    @property
    def peer_host(self) -> str | None:
        addr = self.peer.addr() if self.peer is not None else None
        return str(addr[0]) if addr else None

    @property
    def peer_address(self) -> str | None:
        addr = self.peer.addr() if self.peer is not None else None
        if not addr:
            return None
        host, port = addr[0], addr[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"

    def add_response_headers(self, pairs: list[tuple[str, str | bytes]]) -> None:
        """Headers the transport writes with this call's response headers (in the trailers of a
        trailers-only response). ``pairs``: valid metadata (the caller checked), a list the
        call may keep."""
        if self.response_initial_metadata is None:
            self.response_initial_metadata = pairs
        else:
            self.response_initial_metadata.extend(pairs)

    def time_remaining(self) -> float | None:
        return self.deadline.time_remaining() if self.deadline is not None else None

    def __repr__(self) -> str:
        return f"<CallContext {self.method} user={self.user_id} cid={self.correlation_id}>"


_current: ContextVar[CallContext | None] = ContextVar("grpcstack_call", default=None)


def current_call() -> CallContext | None:
    """The call being served by the current task, or None outside a call."""
    return _current.get()


def current_user_id() -> str | None:
    call = _current.get()
    return call.user_id if call is not None else None


def current_correlation_id() -> str | None:
    call = _current.get()
    return call.correlation_id if call is not None else None


def outgoing_metadata() -> dict[str, str]:
    """Metadata to forward on calls made while serving a call (correlation id propagation)."""
    call = _current.get()
    if call is None or call.correlation_id is None:
        return {}
    return {CORRELATION_ID_KEY: call.correlation_id}


def set_response_compression(enabled: bool) -> None:
    """Compress (or not) the messages this call sends from now on, if the client accepts gzip."""
    call = _current.get()
    if call is not None:
        call.compress_response = enabled


def require_call() -> CallContext:
    """The call being served; RuntimeError outside one (unit tests: testing.call_context())."""
    call = _current.get()
    if call is None:
        raise RuntimeError(
            "no gRPC call is being served here; in unit tests wrap the handler call in "
            "grpcstack.testing.call_context()"
        )
    return call


MetadataLike = Mapping[str, str | bytes] | Iterable[tuple[str, str | bytes]]


def _checked(metadata: MetadataLike) -> list[tuple[str, str | bytes]]:
    pairs = list(metadata.items() if isinstance(metadata, Mapping) else metadata)
    encode_metadata(pairs)  # raises now, in the handler, for keys/values gRPC cannot carry
    return pairs


def add_initial_metadata(metadata: MetadataLike) -> None:
    """Send ``metadata`` in this call's response headers (grpcio's ``send_initial_metadata``).

    Keys are lower-case; values are str, or bytes for keys ending in ``-bin``. Call it before
    the first response message: RuntimeError once the headers went out.
    """
    call = require_call()
    if call.initial_metadata_sent:
        raise RuntimeError("the response headers of this call were already sent")
    call.add_response_headers(_checked(metadata))


def add_trailing_metadata(metadata: MetadataLike) -> None:
    """Send ``metadata`` in this call's trailers, with any status (grpcio's
    ``set_trailing_metadata``, but adding rather than replacing)."""
    call = require_call()
    if call.status is not None:
        raise RuntimeError("the trailers of this call were already sent")
    pairs = _checked(metadata)
    if call.response_trailing_metadata is None:
        call.response_trailing_metadata = []
    call.response_trailing_metadata.extend(pairs)


def set_current(call: CallContext | None) -> None:
    _current.set(call)
