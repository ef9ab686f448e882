"""AsyncBaseServer: the one class a team subclasses to serve its gRPC services."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import socket
import ssl
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from grpclib.config import Configuration
from grpclib.const import Status
from grpclib.encoding.proto import ProtoStatusDetailsCodec
from prometheus_client import CollectorRegistry

from .cache import GrpcCache
from .codec import StackCodec
from .connection_metrics import ConnectionMetrics
from .definition import check_services, not_implemented
from .gc_policy import freeze_startup_objects
from .health import NOT_SERVING, SERVING, HealthService, ReadinessCheck
from .middleware import (
    AccessLogMiddleware,
    AuthMiddleware,
    ConcurrencyLimitMiddleware,
    CorrelationIdMiddleware,
    ErrorHandlingMiddleware,
    HmacTokenVerifier,
    MetricsMiddleware,
    Middleware,
    MiddlewareChain,
    RateLimitMiddleware,
)
from .observability import MetricsExporter, trace_exporter_configured
from .ratelimit import MemoryLimiter, RedisLimiter
from .reflection import reflection_services, service_names
from .resources import Resources
from .settings import ServerSettings
from .transport import ConnectionPolicy, GrpcServer

if TYPE_CHECKING:
    from .web import WebApp, WebListener

log = logging.getLogger("grpcstack.server")

# Without this pause grpclib clients drop a response that arrives in the same read as GOAWAY.
GOAWAY_LINGER_SECONDS = 0.25
CLOSE_TIMEOUT_SECONDS = 5.0


class AsyncBaseServer:
    """Base class of a grpcstack server.

    Subclasses implement :meth:`services` and may override the async hooks. Lifecycle::

        start():  resources -> before_start -> bind -> health SERVING -> after_start
        stop():   before_stop -> drain (grace) -> GOAWAY -> after_stop -> resources closed
    """

    settings_class: ClassVar[type[ServerSettings]] = ServerSettings
    #: exception type -> status (or (status, fixed message)) for ErrorHandling; subclasses'
    #: maps add to their bases'. Without a fixed message the exception's own text is sent.
    error_map: ClassVar[Mapping[type[BaseException], Status | tuple[Status, str]]] = {}

    def __init__(self, settings: ServerSettings | None = None) -> None:
        self.settings = settings if settings is not None else self.settings_class.load()
        self.resources = Resources(self.settings)
        self.health = HealthService(
            check_timeout=self.settings.GRPC_HEALTH_CHECK_TIMEOUT_SECONDS,
            interval=self.settings.GRPC_HEALTH_CHECK_INTERVAL_SECONDS,
        )
        #: this server's Prometheus registry (served on GRPC_METRICS_PORT when set)
        self.metrics_registry = CollectorRegistry()
        self.metrics_exporter: MetricsExporter | None = None
        self.chain: MiddlewareChain | None = None
        #: the response cache (see grpcstack.cache.cached), ready before before_start
        self.cache: GrpcCache | None = None
        self.port: int | None = None
        self.grpc_server: GrpcServer | None = None
        self._stopped: asyncio.Event | None = None
        self._stop_task: asyncio.Task[None] | None = None
        self._service_names: list[str] = []
        #: the Connect / gRPC-Web listener (GRPC_HTTP_PORT) and its bound port
        self.web: WebListener | None = None
        self.http_port: int | None = None
        self._web_app: WebApp | None = None

    # --- what subclasses provide ------------------------------------------------------------

    def services(self) -> Sequence[Any]:
        """The betterproto2 (or any grpclib) service instances to serve. Required."""
        raise not_implemented(type(self).__name__)

    async def before_start(self) -> None:
        """Runs inside the loop before the port is bound; resources are ready."""

    async def after_start(self) -> None:
        """Runs once the server accepts calls and health says SERVING."""

    async def before_stop(self) -> None:
        """Runs when a stop begins, while calls are still served."""

    async def after_stop(self) -> None:
        """Runs after every call ended and every connection closed, before resources close."""

    def middlewares(self) -> list[Middleware]:
        """The middleware chain, outermost first. Override to add your own::

        def middlewares(self):
            chain = super().middlewares()
            chain.insert(-1, TenantMiddleware(selector=services("billing.v1.Billing")))
            return chain
        """
        s = self.settings
        chain: list[Middleware] = []
        if s.GRPC_ENABLE_METRICS:
            chain.append(
                MetricsMiddleware(
                    self.metrics_registry,
                    buckets=s.GRPC_METRICS_BUCKETS,
                    # a "protocol" label (grpc, connect, grpc-web) only when HTTP is served
                    protocol_label=s.GRPC_HTTP_PORT is not None,
                )
            )
        if s.GRPC_TRACING == "on" or (s.GRPC_TRACING == "auto" and trace_exporter_configured()):
            chain.extend(self._tracing())
        if s.GRPC_MAX_CONCURRENT_RPCS:
            chain.append(ConcurrencyLimitMiddleware(s.GRPC_MAX_CONCURRENT_RPCS))
        if s.GRPC_ENABLE_AUTH:
            verifier = None
            if s.GRPC_AUTH_MODE == "hmac" and s.GRPC_AUTH_HMAC_SECRET is not None:
                verifier = HmacTokenVerifier(s.GRPC_AUTH_HMAC_SECRET.get_secret_value())
            chain.append(
                AuthMiddleware(verifier=verifier, exempt_methods=s.GRPC_AUTH_EXEMPT_METHODS)
            )
        if s.GRPC_ENABLE_RATE_LIMITING:
            chain.append(
                RateLimitMiddleware(
                    self._rate_limiter(),
                    max_requests=s.GRPC_RATE_LIMIT_MAX_REQUESTS,
                    global_max_requests=s.GRPC_RATE_LIMIT_GLOBAL_MAX_REQUESTS,
                )
            )
        if s.GRPC_ENABLE_CORRELATION_ID:
            chain.append(CorrelationIdMiddleware())
        if s.GRPC_ENABLE_LOGGING:
            chain.append(AccessLogMiddleware())
        if s.GRPC_ENABLE_ERROR_HANDLING:
            chain.append(ErrorHandlingMiddleware(error_map=self.merged_error_map()))
        return chain

    def _tracing(self) -> list[Middleware]:
        try:
            from .middleware.tracing import TracingMiddleware, configure_from_env
        except ImportError:
            if self.settings.GRPC_TRACING == "on":
                raise RuntimeError("GRPC_TRACING=on needs pip install 'grpcstack[otel]'") from None
            log.warning("OTEL_* exporter settings found but OpenTelemetry is not installed")
            return []
        if trace_exporter_configured():
            configure_from_env(self.settings.SERVICE_NAME)
        return [TracingMiddleware()]

    def merged_error_map(self) -> dict[type[BaseException], Status | tuple[Status, str]]:
        merged: dict[type[BaseException], Status | tuple[Status, str]] = {}
        for klass in reversed(type(self).__mro__):
            merged.update(klass.__dict__.get("error_map", {}))
        return merged

    def _rate_limiter(self) -> MemoryLimiter | RedisLimiter:
        s = self.settings
        window = float(s.GRPC_RATE_LIMIT_WINDOW_SECONDS)
        use_redis = s.GRPC_RATE_LIMIT_BACKEND == "redis" or (
            s.GRPC_RATE_LIMIT_BACKEND == "auto" and self.resources.redis_configured
        )
        if not use_redis:
            return MemoryLimiter(window)
        return RedisLimiter(
            self.resources.redis(s.REDIS_DB_RATE_LIMIT),
            window,
            prefix=f"grpcstack:rl:{s.SERVICE_NAME}",
            fail_mode=s.GRPC_RATE_LIMIT_FAIL_MODE,
            lease=s.GRPC_RATE_LIMIT_LEASE,
            lease_fraction=s.GRPC_RATE_LIMIT_LEASE_FRACTION,
            multiplexed=self.resources.redis_multiplexed(s.REDIS_DB_RATE_LIMIT),
        )

    def add_readiness_check(
        self, check: ReadinessCheck, *, service: str | None = None, name: str | None = None
    ) -> None:
        """Health turns NOT_SERVING while ``check`` returns False, raises or times out.

        ``service`` is a full service name ("pkg.Service"); None applies to every service.
        """
        self.health.add_check(check, service=service, name=name)

    # --- lifecycle ----------------------------------------------------------------------

    async def start(
        self, *, sock: socket.socket | None = None, http_sock: socket.socket | None = None
    ) -> None:
        """Open resources, run before_start, bind and serve, run after_start.

        ``sock`` is an already bound socket (create it with ``IPPROTO_TCP`` or asyncio skips
        TCP_NODELAY); otherwise GRPC_SERVER_HOST:GRPC_SERVER_PORT is bound (port 0 = any).
        ``http_sock`` likewise for the Connect / gRPC-Web listener, which runs when it is given
        or GRPC_HTTP_PORT is set.
        """
        if self.grpc_server is not None:
            raise RuntimeError("server already started")
        s = self.settings
        self._stopped = asyncio.Event()
        await self.resources.open()
        try:
            for name, check in self.resources.readiness_checks():
                self.health.add_check(check, name=name)
            self.cache = GrpcCache.from_settings(s, self.resources, self.metrics_registry)
            await self.cache.start()
            await self.before_start()
            user_services = check_services(type(self).__name__, self.services())
            for service in user_services:
                self.cache.bind(service)
            handlers: list[Any] = [*user_services, self.health]
            if s.GRPC_SERVER_ENABLE_REFLECTION:
                handlers += reflection_services(handlers)
            self._service_names = [n for svc in user_services for n in service_names(svc)]
            for name in self._service_names:
                self.health.register(name)
            self.chain = MiddlewareChain(self.middlewares())
            self.cache.attach(self.chain)
            for middleware in self.chain.middlewares:
                await middleware.start(self)
            # grpclib binds its Server to the running loop: build it here, not in __init__.
            self.grpc_server = GrpcServer(
                self.chain.wrap_services(handlers),
                codec=StackCodec(s.GRPC_CODEC, self.metrics_registry),
                # a custom codec silently drops rich error details unless this is passed too
                status_details_codec=ProtoStatusDetailsCodec(),
                config=self._grpclib_config(),
                policy=self._connection_policy(),
                observer=ConnectionMetrics(self.metrics_registry),
                max_receive_message_length=s.GRPC_MAX_MESSAGE_LENGTH,
                max_send_message_length=s.GRPC_MAX_SEND_MESSAGE_LENGTH or s.GRPC_MAX_MESSAGE_LENGTH,
                compress_by_default=s.GRPC_COMPRESSION == "gzip",
            )
            self.chain.attach(self.grpc_server)
            for middleware in self.chain.middlewares:
                if isinstance(middleware, MetricsMiddleware):
                    middleware.initialize(self.grpc_server.mapping)
            if s.GRPC_METRICS_PORT:
                host = s.GRPC_METRICS_HOST or s.GRPC_SERVER_HOST
                self.metrics_exporter = MetricsExporter(
                    self.metrics_registry, host, s.GRPC_METRICS_PORT
                )
                await self.metrics_exporter.start()
            if sock is not None:
                await self.grpc_server.start(sock=sock, ssl=self._ssl_context())
            else:
                await self.grpc_server.start(
                    s.GRPC_SERVER_HOST,
                    s.GRPC_SERVER_PORT,
                    ssl=self._ssl_context(),
                    reuse_port=s.GRPC_SERVER_REUSE_PORT or None,
                )
            self.port = self.grpc_server.listening_sockets[0].getsockname()[1]
            if http_sock is not None or s.GRPC_HTTP_PORT is not None:
                await self._start_web(http_sock)
        except BaseException:
            await self._abort_start()
            raise
        self.health.set_all(SERVING)
        log.info(
            "%s serving %s on port %s", s.SERVICE_NAME, ", ".join(self._service_names), self.port
        )
        if self.web is not None:
            log.info("%s serving Connect and gRPC-Web on port %s", s.SERVICE_NAME, self.http_port)
        try:
            await self.after_start()
        except BaseException:
            # the server was up: stop it the normal way so nothing is left listening
            await self.stop(0)
            raise

    def web_app(self) -> WebApp:
        """The ASGI application serving this (started) server's services over Connect and
        gRPC-Web, through the same middleware chain; mount it in Starlette/FastAPI if wanted."""
        if self._web_app is None:
            if self.grpc_server is None:
                raise RuntimeError("start the server first")
            from ._compat import server_dispatch
            from .web import WebApp

            s = self.settings
            self._web_app = WebApp(
                mapping=self.grpc_server.mapping,
                dispatch=server_dispatch(self.grpc_server),
                chain=self.chain,
                codec=self.grpc_server.codec,
                max_receive_length=s.GRPC_MAX_MESSAGE_LENGTH,
                max_send_length=s.GRPC_MAX_SEND_MESSAGE_LENGTH or s.GRPC_MAX_MESSAGE_LENGTH,
                compress_by_default=s.GRPC_COMPRESSION == "gzip",
                cors_origins=s.GRPC_HTTP_CORS_ORIGINS,
                is_draining=lambda: self.grpc_server is None or self.grpc_server.draining,
            )
        return self._web_app

    async def _start_web(self, http_sock: socket.socket | None) -> None:
        from .web import WebListener

        s = self.settings
        self.web = WebListener(self.web_app())
        await self.web.start(
            s.GRPC_HTTP_HOST or s.GRPC_SERVER_HOST, s.GRPC_HTTP_PORT or 0, sock=http_sock
        )
        self.http_port = self.web.port

    async def _abort_start(self) -> None:
        if self.web is not None:
            await self.web.stop()
            self.web = None
        if self.grpc_server is not None and self.grpc_server.asyncio_server is not None:
            self.grpc_server.close()
            self.grpc_server.goaway_all()
        self.grpc_server = None
        await self._stop_middlewares()
        await self.resources.close()
        if self._stopped is not None:
            self._stopped.set()

    async def stop(self, grace_period: float | None = None) -> None:
        """Drain and stop. Safe to call more than once; later calls wait for the first.

        New calls get UNAVAILABLE at once; in-flight calls have ``grace_period`` seconds
        (GRPC_SERVER_GRACE_PERIOD_SECONDS by default) to finish, the rest end UNAVAILABLE; then
        every connection gets GOAWAY and is closed.
        """
        if self._stop_task is None:
            if self.grpc_server is None:
                raise RuntimeError("server not started")  # and nothing kept: start() still works
            grace = (
                self.settings.GRPC_SERVER_GRACE_PERIOD_SECONDS
                if grace_period is None
                else grace_period
            )
            self._stop_task = asyncio.ensure_future(self._stop(grace))
        await asyncio.shield(self._stop_task)

    async def _stop(self, grace: float) -> None:
        server = self.grpc_server
        if server is None:
            raise RuntimeError("server not started")
        try:
            await self.before_stop()
        finally:
            server.draining = True
            self.health.shutdown()
            server.stop_listening()
            # every connection is closed at a moment no call can be lost (transport.connection);
            # calls already accepted, and calls arriving before the final GOAWAY, are served
            server.drain_all()
            web = self._web_app  # its new calls get UNAVAILABLE from now on (draining)
            pending = await self._drained(server, web, grace)
            if pending:
                log.warning(
                    "%d call(s) still running after %ss grace: cancelling", len(pending), grace
                )
                server.stopping = True
                server.cancel_inflight()
                if web is not None:
                    for task in web.inflight:
                        task.cancel()
                await asyncio.wait(pending, timeout=1.0)
            if any(p.open for p in list(server.protocols)):
                await asyncio.sleep(GOAWAY_LINGER_SECONDS)
                server.goaway_all()
            server.close()
            if self.web is not None:
                await self.web.stop()
                self.web = None
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
                    await server.wait_closed()
                    await server.wait_lingering()
            except TimeoutError:
                log.warning("connections did not close within %ss", CLOSE_TIMEOUT_SECONDS)
            await self._stop_middlewares()
            try:
                await self.after_stop()
            finally:
                await self.resources.close()
                assert self._stopped is not None
                self._stopped.set()
                log.info("%s stopped", self.settings.SERVICE_NAME)

    async def _drained(self, server: GrpcServer, web: Any, grace: float) -> set[Any]:
        """Wait up to ``grace`` for every call, also those accepted during the drain, to end and
        every connection to close itself; return the calls still running."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while True:
            pending = {t for t in server.inflight if not t.done()}
            if web is not None:
                pending |= {t for t in web.inflight if not t.done()}
            remaining = deadline - loop.time()
            if remaining <= 0 or not (pending or any(p.open for p in list(server.protocols))):
                return pending
            if pending:
                await asyncio.wait(pending, timeout=min(remaining, 0.05))
            else:
                await asyncio.sleep(min(remaining, 0.01))

    async def _stop_middlewares(self) -> None:
        if self.metrics_exporter is not None:
            await self.metrics_exporter.stop()
            self.metrics_exporter = None
        if self.chain is not None:
            for middleware in self.chain.middlewares:
                try:
                    await middleware.stop()
                except Exception:
                    log.exception("stopping %r failed", middleware)
        if self.cache is not None:
            await self.cache.close()

    async def wait_for_termination(self) -> None:
        """Wait until a stop (from a signal or another task) has finished."""
        if self._stopped is None:
            raise RuntimeError("server not started")
        await self._stopped.wait()

    async def serve(self) -> None:
        """start(), then run until SIGINT/SIGTERM.

        First signal: graceful stop (drain within the grace period); the coroutine returns.
        Second signal: immediate exit of the process.
        """
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM)

        signalled: list[asyncio.Task[None]] = []
        started = False
        stop_requested = False

        def on_signal(signum: int) -> None:
            nonlocal stop_requested
            if stop_requested or self._stop_task is not None:
                log.warning("second %s: exiting immediately", signal.Signals(signum).name)
                os._exit(1)
            log.info("%s: stopping gracefully", signal.Signals(signum).name)
            stop_requested = True
            if started:  # else the stop begins as soon as start() has returned
                # the public stop(), so that a subclass's stop() override runs too
                signalled.append(asyncio.ensure_future(self.stop()))

        # handlers first: a signal that arrives while starting (or just after the "serving" log
        # line) drains the server instead of killing the process
        for sig in signals:
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            await self.start()
            started = True
            s = self.settings
            if s.GRPC_GC_FREEZE:
                frozen = freeze_startup_objects(s.GRPC_GC_YOUNG_THRESHOLD)
                log.debug("froze %d start-up objects out of the GC", frozen)
            if stop_requested:
                signalled.append(asyncio.ensure_future(self.stop()))
            await self.wait_for_termination()
            for task in signalled:
                await task
            if self._stop_task is not None:
                await self._stop_task
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)

    # --- helpers --------------------------------------------------------------------------

    @property
    def service_names(self) -> list[str]:
        return list(self._service_names)

    @property
    def serving(self) -> bool:
        return self.grpc_server is not None and not self.grpc_server.draining

    def _grpclib_config(self) -> Configuration:
        s = self.settings
        return Configuration(
            _keepalive_time=s.GRPC_KEEPALIVE_TIME_MS / 1000,
            _keepalive_timeout=s.GRPC_KEEPALIVE_TIMEOUT_MS / 1000,
            _keepalive_permit_without_calls=s.GRPC_KEEPALIVE_PERMIT_WITHOUT_CALLS,
            http2_connection_window_size=s.GRPC_HTTP2_CONNECTION_WINDOW_SIZE,
            http2_stream_window_size=s.GRPC_HTTP2_STREAM_WINDOW_SIZE,
        )

    def _connection_policy(self) -> ConnectionPolicy:
        s = self.settings

        def seconds(ms: int | None) -> float:
            return math.inf if ms is None else ms / 1000

        return ConnectionPolicy(
            max_concurrent_streams=s.GRPC_MAX_CONCURRENT_STREAMS,
            max_header_list_size=s.GRPC_MAX_METADATA_SIZE,
            max_resets=s.GRPC_MAX_RESETS_PER_CONNECTION,
            reset_interval=s.GRPC_RESET_INTERVAL_SECONDS,
            keepalive_min_time=s.GRPC_KEEPALIVE_MIN_TIME_MS / 1000,
            keepalive_permit_without_calls=s.GRPC_KEEPALIVE_CLIENT_PERMIT_WITHOUT_CALLS,
            max_connection_age=seconds(s.GRPC_MAX_CONNECTION_AGE_MS),
            max_connection_age_grace=seconds(s.GRPC_MAX_CONNECTION_AGE_GRACE_MS),
            max_connection_idle=seconds(s.GRPC_MAX_CONNECTION_IDLE_MS),
            max_pending_bytes=max(s.GRPC_MAX_CONNECTION_PENDING_BYTES, s.GRPC_MAX_MESSAGE_LENGTH),
            message_body_timeout=s.GRPC_MESSAGE_BODY_TIMEOUT_SECONDS,
            max_connections=s.GRPC_MAX_CONNECTIONS,
        )

    def _ssl_context(self) -> ssl.SSLContext | None:
        s = self.settings
        if s.GRPC_TLS_CERT_FILE is None or s.GRPC_TLS_KEY_FILE is None:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(s.GRPC_TLS_CERT_FILE), str(s.GRPC_TLS_KEY_FILE))
        ctx.set_alpn_protocols(["h2"])
        if s.GRPC_TLS_CLIENT_CA_FILE is not None:
            ctx.load_verify_locations(str(s.GRPC_TLS_CLIENT_CA_FILE))
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx


__all__ = ["NOT_SERVING", "SERVING", "AsyncBaseServer"]
