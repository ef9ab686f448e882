"""Every access grpcstack makes to a private part of grpclib or h2 lives in this module.

grpclib 0.4.9 (pinned in pyproject.toml) lacks what a production server and client need, so the
stack replaces a few of its private pieces. Keeping every such access here means a grpclib or h2
upgrade is checked in one place; ``tests/test_transport.py`` fails loudly when one moves.

Sections: server side (protocol, handler, stream), client side (channel, protocol, stream).
"""

from __future__ import annotations

GRPCLIB_VERSION = "0.4.9"

# --- server side --------------------------------------------------------------------------

# --- client side --------------------------------------------------------------------------

# --- web side (grpcstack.web: Connect and gRPC-Web over the same handlers) ----------------------


def server_dispatch(server: object) -> object:
    """grpclib's event dispatcher of a Server (where the middleware chain listens)."""
    return server.__dispatch__  # type: ignore[attr-defined]


def server_mapping(server: object) -> dict[str, object]:
    """The method table of a grpclib Server: full method name -> Handler."""
    return server._mapping  # type: ignore[attr-defined,no-any-return]


def server_codec(server: object) -> object:
    """The message codec a grpclib Server was built with."""
    return server._codec  # type: ignore[attr-defined]
