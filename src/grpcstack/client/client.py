"""Client: the stack's gRPC client, for betterproto2 stubs.

::

    async with Client("127.0.0.1:50051") as client:
        echo = client.stub(EchoServiceStub)
        reply = await echo.echo(EchoRequest(message="hi"), timeout=2)

Connections open lazily (one per target, shared by every call), retries follow gRFC A6, and a
call made while serving a call inherits its deadline and correlation id, and with
GRPC_CLIENT_FORWARD_IDENTITY its caller's user-id and authorization (see propagation.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from grpclib.const import Cardinality, Status
from grpclib.encoding.base import CodecBase
from grpclib.encoding.proto import ProtoStatusDetailsCodec
from grpclib.metadata import Deadline, encode_metadata
from prometheus_client import CollectorRegistry

from ..codec import StackCodec
from ..observability import trace_exporter_configured
from ..settings import ClientSettings
from .call import ClientCall, RpcError
from .channel import Endpoint, Pool, client_ssl_context
from .config import HedgingPolicy, MethodConfig
from .metrics import ClientMetrics
from .middleware import ClientCallInfo, ClientMiddleware
from .propagation import forward_identity, inherit
from .retry import RetryPolicy, RetryThrottle
from .spec import MethodSpec

StubT = TypeVar("StubT")

log = logging.getLogger("grpcstack.client")


class Client:
    """A gRPC client over one or more targets ("host:port"), round-robin.

    ``methods`` maps a full method or a service name to its :class:`MethodConfig` (timeout, retry
    policy, hedging); everything else comes from ``settings`` (GRPC_CLIENT_* environment names).
    ``middlewares`` run around every call (see :mod:`grpcstack.client.middleware`);
    ``metrics_registry`` adds the go-grpc-middleware client metrics to that registry;
    ``metadata`` is sent on every call; ``codec`` replaces the stack's message codec.
    """

    def __init__(
        self,
        targets: str | Sequence[str] | None = None,
        *,
        settings: ClientSettings | None = None,
        methods: Mapping[str, MethodConfig] | None = None,
        middlewares: Sequence[ClientMiddleware] = (),
        metrics_registry: CollectorRegistry | None = None,
        metadata: Mapping[str, str | bytes] | None = None,
        codec: CodecBase | None = None,
    ) -> None:
        s = settings if settings is not None else ClientSettings.load()
        self.settings = s
        if targets is None:
            targets = s.GRPC_CLIENT_TARGETS
        if isinstance(targets, str):
            targets = [t for t in targets.split(",") if t.strip()]
        self.targets = [t.strip() for t in targets]
        self.methods = dict(methods or {})
        self.default_config = MethodConfig(
            timeout=s.GRPC_CLIENT_TIMEOUT_SECONDS,
            retry=RetryPolicy.of(
                s.GRPC_CLIENT_RETRYABLE_STATUS_CODES,
                max_attempts=s.GRPC_CLIENT_RETRY_MAX_ATTEMPTS,
                initial_backoff=s.GRPC_CLIENT_RETRY_INITIAL_BACKOFF_SECONDS,
                max_backoff=s.GRPC_CLIENT_RETRY_MAX_BACKOFF_SECONDS,
                backoff_multiplier=s.GRPC_CLIENT_RETRY_BACKOFF_MULTIPLIER,
            ),
            wait_for_ready=s.GRPC_CLIENT_WAIT_FOR_READY,
        )
        self.middlewares = list(middlewares)
        self.middlewares[:0] = _tracing(s, self.middlewares)
        if metrics_registry is not None:
            self.middlewares.insert(0, ClientMetrics(metrics_registry))
        self.codec = codec if codec is not None else StackCodec()
        self.details_codec = ProtoStatusDetailsCodec()
        self.max_receive = s.GRPC_CLIENT_MAX_RECEIVE_MESSAGE_LENGTH
        self.max_send = s.GRPC_CLIENT_MAX_SEND_MESSAGE_LENGTH
        self.retry_buffer = s.GRPC_CLIENT_RETRY_BUFFER_BYTES
        self.compression = s.GRPC_CLIENT_COMPRESSION
        self.throttle = (
            RetryThrottle(
                s.GRPC_CLIENT_RETRY_THROTTLE_MAX_TOKENS, s.GRPC_CLIENT_RETRY_THROTTLE_TOKEN_RATIO
            )
            if s.GRPC_CLIENT_RETRY_THROTTLE_MAX_TOKENS > 0
            else None
        )
        static: list[tuple[str, str | bytes]] = []
        if s.GRPC_CLIENT_USER_ID:
            static.append(("user-id", s.GRPC_CLIENT_USER_ID))
        if s.GRPC_CLIENT_BEARER_TOKEN is not None:
            static.append(
                ("authorization", f"Bearer {s.GRPC_CLIENT_BEARER_TOKEN.get_secret_value()}")
            )
        static += list((metadata or {}).items())
        self._static_metadata = encode_metadata(static) if static else []
        self._specs: dict[tuple[str, Cardinality], MethodSpec] = {}
        self._stub_classes: dict[type, type] = {}
        self._pool: Pool | None = None
        #: calls begun and not finished; a closing client waits for them (aclose)
        self.inflight = 0
        self.closing = False
        self._idle: asyncio.Event | None = None

    # --- connections --------------------------------------------------------------------

    @property
    def pool(self) -> Pool:
        if self._pool is None:
            self._pool = self._build_pool()
        return self._pool

    def _build_pool(self) -> Pool:
        s = self.settings
        ssl_context = None
        if s.tls_enabled:
            ssl_context = client_ssl_context(
                s.GRPC_CLIENT_TLS_CA_FILE, s.GRPC_CLIENT_TLS_CERT_FILE, s.GRPC_CLIENT_TLS_KEY_FILE
            )
        keepalive = s.GRPC_CLIENT_KEEPALIVE_TIME_MS
        return Pool(
            [
                Endpoint(
                    target,
                    ssl_context=ssl_context,
                    server_name=s.GRPC_CLIENT_TLS_SERVER_NAME,
                    connect_timeout=s.GRPC_CLIENT_CONNECT_TIMEOUT_SECONDS,
                    backoff_initial=s.GRPC_CLIENT_RECONNECT_INITIAL_SECONDS,
                    backoff_max=s.GRPC_CLIENT_RECONNECT_MAX_SECONDS,
                    stream_window=s.GRPC_CLIENT_HTTP2_STREAM_WINDOW_SIZE,
                    connection_window=s.GRPC_CLIENT_HTTP2_CONNECTION_WINDOW_SIZE,
                    keepalive_time=keepalive / 1000 if keepalive else None,
                    keepalive_timeout=s.GRPC_CLIENT_KEEPALIVE_TIMEOUT_MS / 1000,
                )
                for target in self.targets
            ]
        )

    async def __aenter__(self) -> Client:
        _ = self.pool  # validate targets now; connect lazily
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose(self.settings.GRPC_CLIENT_CLOSE_GRACE_SECONDS)

    def call_ended(self) -> None:
        self.inflight -= 1
        if self.inflight == 0 and self._idle is not None:
            self._idle.set()

    async def aclose(self, grace: float = 5.0) -> None:
        """Refuse new calls (UNAVAILABLE), let running ones finish within ``grace`` seconds,
        then close every connection."""
        self.closing = True
        if self.inflight:
            self._idle = asyncio.Event()
            try:
                async with asyncio.timeout(grace):
                    await self._idle.wait()
            except TimeoutError:
                pass
        self.close()

    def close(self) -> None:
        """Close every connection now (calls still running on them fail with UNAVAILABLE)."""
        self.closing = True
        if self._pool is not None:
            self._pool.close()

    # --- calls --------------------------------------------------------------------------

    def stub(self, stub_class: type[StubT], **kwargs: Any) -> StubT:
        """A betterproto2 stub whose calls go through this client."""
        cls = self._stub_classes.get(stub_class)
        if cls is None:
            cls = self._stub_classes[stub_class] = _fast_stub(stub_class)
        return cls(self, **kwargs)  # type: ignore[no-any-return]

    def _spec(
        self, name: str, cardinality: Cardinality, request_type: type, reply_type: type
    ) -> MethodSpec:
        spec = self._specs.get((name, cardinality))
        if spec is None or spec.reply_type is not reply_type:
            spec = self._specs[(name, cardinality)] = MethodSpec(
                self, name, cardinality, request_type, reply_type
            )
        return spec

    def request(
        self,
        name: str,
        cardinality: Cardinality,
        request_type: type,
        reply_type: type,
        *,
        timeout: float | None = None,
        deadline: Deadline | None = None,
        metadata: Any = None,
    ) -> ClientCall:
        """grpclib ``Channel.request``: what betterproto2 stubs (and grpclib's) call."""
        spec = self._spec(name, cardinality, request_type, reply_type)
        return self._call(spec, timeout, deadline, metadata)

    def _call(
        self, spec: MethodSpec, timeout: float | None, deadline: Deadline | None, metadata: Any
    ) -> ClientCall:
        s = self.settings
        loop_now = asyncio.get_running_loop().time()
        end: float | None = None
        if timeout is None:
            timeout = spec.timeout
        if timeout is not None:
            end = loop_now + timeout
        if deadline is not None:
            d = loop_now + deadline.time_remaining()
            end = d if end is None else min(end, d)
        given = encode_metadata(metadata) if metadata else []
        if s.GRPC_CLIENT_FORWARD_IDENTITY:
            headers = forward_identity(self._static_metadata, given) + given
        else:
            headers = self._static_metadata + given
        end = inherit(
            headers,
            end,
            loop_now,
            deadline=s.GRPC_CLIENT_PROPAGATE_DEADLINE,
            correlation_id=s.GRPC_CLIENT_PROPAGATE_CORRELATION_ID,
        )
        info = ClientCallInfo(spec.method, spec.cardinality, headers)  # type: ignore[arg-type]
        info.deadline = end
        return ClientCall(self, spec, info, headers)

    async def unary_unary(
        self,
        name: str,
        request: Any,
        reply_type: type,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - grpclib stub API
        deadline: Deadline | None = None,
        metadata: Any = None,
    ) -> Any:
        spec = self._spec(name, Cardinality.UNARY_UNARY, type(request), reply_type)
        if spec.hedging is not None:
            from .hedging import hedged

            return await hedged(self, self._call, spec, request, timeout, deadline, metadata)
        return await self._call(spec, timeout, deadline, metadata).unary(request)


def _tracing(s: ClientSettings, given: Sequence[ClientMiddleware]) -> list[ClientMiddleware]:
    """[ClientTracing] when GRPC_CLIENT_TRACING says so and the caller gave none; OpenTelemetry is
    imported only then (tracing off costs a call nothing: no hook is added)."""
    if s.GRPC_CLIENT_TRACING == "off" or any(m.name == "client-tracing" for m in given):
        return []
    if s.GRPC_CLIENT_TRACING == "auto" and not trace_exporter_configured():
        return []
    try:
        from .tracing import ClientTracing
    except ImportError:
        if s.GRPC_CLIENT_TRACING == "on":
            raise RuntimeError(
                "GRPC_CLIENT_TRACING=on needs pip install 'grpcstack[otel]'"
            ) from None
        log.warning("OTEL_* exporter settings found but OpenTelemetry is not installed")
        return []
    return [ClientTracing(configure=True)]


def _fast_stub(stub_class: type) -> type:
    """A subclass of a betterproto2 stub whose unary calls skip the stream protocol."""

    async def _unary_unary(
        self: Any,
        route: str,
        request: Any,
        response_type: type,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - grpclib stub API
        deadline: Deadline | None = None,
        metadata: Any = None,
    ) -> Any:
        return await self.channel.unary_unary(
            route,
            request,
            response_type,
            timeout=self.timeout if timeout is None else timeout,
            deadline=self.deadline if deadline is None else deadline,
            metadata=self.metadata if metadata is None else metadata,
        )

    return type(stub_class.__name__, (stub_class,), {"_unary_unary": _unary_unary})


__all__ = [
    "Client",
    "ClientMiddleware",
    "HedgingPolicy",
    "MethodConfig",
    "RetryPolicy",
    "RpcError",
    "Status",
]
