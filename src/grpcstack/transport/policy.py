"""What one connection may do, and how the transport reports what it refused.

The defaults follow grpc-go's server where it has the same knob (keepalive enforcement, connection
age and idle) and RFC 9113 where it speaks (refused streams, GOAWAY before closing).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

#: GOAWAY error codes (RFC 9113 section 7) the transport sends
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
ENHANCE_YOUR_CALM = 0xB


@dataclass(frozen=True, slots=True)
class ConnectionPolicy:
    #: advertised in SETTINGS; a stream beyond it gets RST_STREAM(REFUSED_STREAM)
    max_concurrent_streams: int = 100
    #: advertised SETTINGS_MAX_HEADER_LIST_SIZE; a larger request is refused on its stream
    max_header_list_size: int = 16 * 1024
    #: client resets (RST_STREAM) allowed per connection per ``reset_interval`` seconds before
    #: GOAWAY(ENHANCE_YOUR_CALM): the rapid-reset (CVE-2023-44487) cap
    max_resets: int = 1000
    reset_interval: float = 10.0
    #: keepalive enforcement: client pings closer together than this are strikes (grpc-go's
    #: MinTime); more than ``max_ping_strikes`` -> GOAWAY(ENHANCE_YOUR_CALM, "too_many_pings")
    keepalive_min_time: float = 300.0
    keepalive_permit_without_calls: bool = False
    max_ping_strikes: int = 2
    #: GOAWAY a connection this old (jittered +-10%), then close it ``max_connection_age_grace``
    #: seconds later; GOAWAY a connection idle this long. inf = never (grpc-go's defaults)
    max_connection_age: float = math.inf
    max_connection_age_grace: float = math.inf
    max_connection_idle: float = math.inf
    #: bytes of partly received request messages one connection may hold; beyond it the
    #: transport stops reading (and granting flow-control window) until messages complete
    max_pending_bytes: int = 64 * 1024 * 1024
    #: a request message whose body has not fully arrived this long after its length prefix
    #: ends the call CANCELLED and frees its buffer
    message_body_timeout: float = 30.0
    #: 0 = unlimited; beyond it a new connection gets GOAWAY and is closed at once
    max_connections: int = 0
    #: how long a drain waits for the PING ack before the final GOAWAY (grpc-go waits for it)
    drain_ping_timeout: float = 1.0
    #: how long a draining connection of a python-h2 client must stay idle before its GOAWAY
    drain_idle_linger: float = 0.25
    #: a draining connection of such a client that stays busy this long refuses new streams
    drain_busy_refuse_after: float = 1.0


class TransportObserver(Protocol):
    """Told what the transport did, for metrics; every method must be cheap and not raise."""

    def connection_opened(self) -> None: ...
    def connection_closed(self) -> None: ...
    def stream_refused(self, reason: str) -> None: ...
    def stream_reset(self, before_dispatch: bool) -> None: ...
    def goaway_sent(self, reason: str) -> None: ...


class NullObserver:
    def connection_opened(self) -> None:
        pass

    def connection_closed(self) -> None:
        pass

    def stream_refused(self, reason: str) -> None:
        pass

    def stream_reset(self, before_dispatch: bool) -> None:
        pass

    def goaway_sent(self, reason: str) -> None:
        pass


# --- what the transport's modules need of each other (keeps their imports one-way) ---------


class MessageRoom(Protocol):
    """A connection as a stream sees it: the room for half-received request messages."""

    policy: ConnectionPolicy

    def reserve(self, size: int) -> Any: ...
    def unreserve(self, size: int, fut: Any = None) -> None: ...


class Listener(Protocol):
    """The server as a connection sees it."""

    policy: ConnectionPolicy
    observer: TransportObserver
    protocols: Any
    lingering: set[Any]
    stack_h2_config: Any
    draining: bool
    stopping: bool

    @property
    def grpclib_config(self) -> Any: ...
    def forget_handler(self, handler: Any) -> None: ...
    def linger_done(self, protocol: Any) -> None: ...


class Dispatcher(Protocol):
    """The server as a request task sees it."""

    max_receive_message_length: int
    max_send_message_length: int
    compress_by_default: bool
    stopping: bool
    on_call_done: Callable[[Any], None] | None
    __dispatch__: Any

    @property
    def mapping(self) -> dict[str, Any]: ...
    @property
    def codec(self) -> Any: ...
    @property
    def status_details_codec(self) -> Any: ...
    def track(self, task: Any) -> None: ...
