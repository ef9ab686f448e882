"""Every access grpcstack makes to a private part of grpclib, h2, hpack or hyperframe lives in this
package.

grpclib 0.4.9 (pinned in pyproject.toml) lacks what a production server and client need, so the
stack replaces a few of its private pieces. Keeping every such access here means a grpclib or h2
upgrade is checked in one place; ``tests/test_transport.py`` fails loudly when one moves. The rest
of the stack sees these pieces only through the public names re-exported below.

Modules, one per library part: ``grpclib_server`` (Stream, Handler, Server, the body buffer),
``h2_connection`` (the server's H2Connection), ``h2_frame_buffer`` (its lean frame parse),
``h2_state`` (its state machines' lookups), ``hpack_tables`` (server and client HPACK caches),
``hyperframe_flags`` (frame flag names).
"""

from __future__ import annotations

from .grpclib_server import (
    GRPCLIB_VERSION,
    METADATA_VALUE_RE,
    STATUS_DETAILS_KEY,
    ServerBase,
    ServerH2Stream,
    ServerHandlerBase,
    ServerStreamBase,
    StackServerEvents,
    drop_buffered,
    read_buffered,
    send_data_now,
    send_headers_now,
    server_dispatch,
    set_nodelay,
    take_unacked,
)
from .h2_connection import (
    LEAN_FRAMES,
    LEAN_FRAMES_H2_VERSIONS,
    ServerH2Connection,
    lazy_frame_repr,
    lift_inbound_stream_limit,
)
from .h2_state import STATE_MACHINES_H2_VERSIONS, lean_state_machines
from .hpack_tables import (
    HPACK_VERSION,
    CachedHeaderDecoder,
    CappedDecoder,
    ClientHeaderEncoder,
    CountingTable,
    StackEncoder,
)
from .hyperframe_flags import HYPERFRAME_VERSION, _cached_flags_init, cache_frame_flag_names

__all__ = [
    "GRPCLIB_VERSION",
    "HPACK_VERSION",
    "HYPERFRAME_VERSION",
    "LEAN_FRAMES",
    "LEAN_FRAMES_H2_VERSIONS",
    "METADATA_VALUE_RE",
    "STATE_MACHINES_H2_VERSIONS",
    "STATUS_DETAILS_KEY",
    "CachedHeaderDecoder",
    "CappedDecoder",
    "ClientHeaderEncoder",
    "CountingTable",
    "ServerBase",
    "ServerH2Connection",
    "ServerH2Stream",
    "ServerHandlerBase",
    "ServerStreamBase",
    "StackEncoder",
    "StackServerEvents",
    "_cached_flags_init",
    "cache_frame_flag_names",
    "drop_buffered",
    "lazy_frame_repr",
    "lean_state_machines",
    "lift_inbound_stream_limit",
    "read_buffered",
    "send_data_now",
    "send_headers_now",
    "server_dispatch",
    "set_nodelay",
    "take_unacked",
]
