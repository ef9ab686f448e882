"""The HTTP/2 transport grpcstack serves on, built on grpclib (whose privates it reaches only
through ``grpcstack._compat``).

* ``connection``: one HTTP/2 connection: SETTINGS, write coalescing, refused streams, reset and
  ping policing, header limits, GOAWAY and drain, the room for half-received messages.
* ``stream``: gRPC message framing: length limits, body timeout, gzip, message counters.
* ``dispatch``: headers to handler: validation, deadlines, statuses, the call-done callback.
* ``server``: listening, connection tracking, in-flight calls.
* ``policy``: the per-connection limits and the observer told what was refused.
"""

from .policy import ConnectionPolicy, NullObserver, TransportObserver
from .server import GrpcServer

__all__ = ["ConnectionPolicy", "GrpcServer", "NullObserver", "TransportObserver"]
