"""What a call needs from its client, and what it knows about its method.

``ClientLike`` is the part of :class:`grpcstack.client.Client` that calls, attempts and hedging
use: typed against it (not the class) so those modules do not import the client module, which
imports them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from grpclib.const import Cardinality
from grpclib.encoding.base import GRPC_CONTENT_TYPE, CodecBase
from grpclib.metadata import USER_AGENT

from ..compression import ACCEPT_ENCODING, GZIP
from .channel import Endpoint, Pool
from .config import MethodConfig, resolve
from .middleware import ClientMiddleware, Hooks
from .retry import RetryThrottle

_USER_AGENT = f"grpcstack-client {USER_AGENT}"


class ClientLike(Protocol):
    methods: Mapping[str, MethodConfig]
    default_config: MethodConfig
    middlewares: list[ClientMiddleware]
    codec: CodecBase
    details_codec: Any
    throttle: RetryThrottle | None
    max_receive: int
    max_send: int
    retry_buffer: int
    compression: str
    inflight: int
    closing: bool

    @property
    def pool(self) -> Pool: ...

    def call_ended(self) -> None: ...


class MethodSpec:
    """Everything about calling one method that does not change between calls (copied, not
    shared, by hedging)."""

    __slots__ = (
        "_headers",
        "cardinality",
        "compress",
        "hedging",
        "hooks",
        "max_receive",
        "method",
        "reply_type",
        "request_type",
        "retry",
        "timeout",
        "wait_for_ready",
    )

    def __init__(
        self,
        client: ClientLike,
        method: str,
        cardinality: Cardinality,
        request_type: type,
        reply_type: type,
    ) -> None:
        cfg = resolve(client.methods, method, client.default_config)
        self.method = method
        self.cardinality = cardinality
        self.request_type = request_type
        self.reply_type = reply_type
        self.timeout = cfg.timeout
        self.retry = cfg.retry
        self.hedging = cfg.hedging
        self.wait_for_ready = bool(cfg.wait_for_ready)
        self.max_receive = cfg.max_receive_message_length or client.max_receive
        self.compress = client.compression == GZIP
        self.hooks = Hooks(client.middlewares, method)
        self._headers: dict[str, tuple[tuple[bytes, bytes], ...]] = {}

    def headers_for(self, endpoint: Endpoint) -> tuple[tuple[bytes, bytes], ...]:
        """The request headers every call of this method to ``endpoint`` starts with."""
        headers = self._headers.get(endpoint.target)
        if headers is None:
            built = [
                (":method", "POST"),
                (":scheme", endpoint.scheme),
                (":path", self.method),
                (":authority", endpoint.authority),
                ("te", "trailers"),
                ("content-type", GRPC_CONTENT_TYPE),
                ("user-agent", _USER_AGENT),
                ("grpc-accept-encoding", ACCEPT_ENCODING),
            ]
            if self.compress:
                built.append(("grpc-encoding", GZIP))
            headers = self._headers[endpoint.target] = tuple(
                (k.encode("ascii"), v.encode("ascii")) for k, v in built
            )
        return headers
