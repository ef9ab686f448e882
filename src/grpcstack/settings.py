"""Server settings read from the environment and `.env`.

Field names are the environment names of the seeds' ``CommonSettings`` (``GRPC_SERVER_PORT``,
``GRPC_ENABLE_AUTH`` ...), so a team overrides them per service exactly as before::

    class StrategySettings(ServerSettings):
        SERVICE_NAME: str = "strategy-service"
        GRPC_RATE_LIMIT_MAX_REQUESTS: int = 2000

Environment variables (and `.env`) still win over class defaults. Seed settings with no meaning on
asyncio (``GRPC_SERVER_MAX_WORKERS``: there is no thread pool) are accepted and ignored.
"""

from __future__ import annotations

import difflib
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

Port = Annotated[int, Field(ge=0, le=65535)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
# HTTP/2 allows windows from 64 KiB - 1 to 2 GiB - 1 (RFC 9113 6.9.2); grpclib wants >= 64 KiB.
WindowSize = Annotated[int, Field(ge=2**16, le=2**31 - 1)]

DEFAULT_AUTH_EXEMPT_METHODS = (
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
)


class SettingsError(ValueError):
    """Invalid configuration; the message names every offending environment variable."""


class SettingsWarning(UserWarning):
    """An environment or .env name that looks like a setting but is none (ignored)."""


class ServerSettings(BaseSettings):
    """Everything an AsyncBaseServer reads at start. Subclass to add or override per service."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        validate_default=True,
        frozen=True,
    )

    #: True for settings that read neither .env nor the environment (grpcstack.testing)
    hermetic: ClassVar[bool] = False

    def __init__(self, **values: Any) -> None:
        """Keyword typos raise; env/.env typos raise when close to a setting, else warn (below)."""
        check_keywords(type(self), values)
        if not self.hermetic:
            check_environment(
                type(self), values.get("_env_file", self.model_config.get("env_file"))
            )
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise SettingsError(describe_validation_error(exc)) from None
        except SourceError as exc:  # a value that could not even be decoded (bad JSON list)
            raise SettingsError(describe_source_error(exc, type(self))) from None

    # Service
    SERVICE_NAME: str = "grpc-service"
    ENVIRONMENT: str = "development"
    LOG_LEVEL: str = "INFO"

    # Server
    GRPC_SERVER_HOST: str = "0.0.0.0"
    GRPC_SERVER_PORT: Port = 50051
    GRPC_SERVER_ENABLE_REFLECTION: bool = False
    GRPC_SERVER_REUSE_PORT: bool = False
    GRPC_SERVER_GRACE_PERIOD_SECONDS: NonNegativeFloat = 10.0
    GRPC_SERVER_MAX_WORKERS: int | None = None  # seed name; ignored: no thread pool on asyncio
    GRPC_UVLOOP: bool = True  # use uvloop when it is installed (`pip install grpcstack[uvloop]`)
    GRPC_GC_FREEZE: bool = True  # serve(): freeze start-up objects out of the cyclic GC
    GRPC_GC_YOUNG_THRESHOLD: NonNegativeInt = 0  # serve(): gen-0 GC threshold; 0 = Python's
    GRPC_CODEC: Literal["plan", "betterproto2"] = "plan"  # betterproto2: debugging escape hatch
    GRPC_COMPRESSION: Literal["none", "gzip"] = "none"  # compress responses of gzip-aware clients

    # Server options
    GRPC_KEEPALIVE_TIME_MS: PositiveInt = 30_000
    GRPC_KEEPALIVE_TIMEOUT_MS: PositiveInt = 10_000
    GRPC_KEEPALIVE_PERMIT_WITHOUT_CALLS: bool = False
    GRPC_MAX_CONCURRENT_STREAMS: PositiveInt = 100
    GRPC_MAX_MESSAGE_LENGTH: PositiveInt = 10 * 1024 * 1024
    GRPC_MAX_SEND_MESSAGE_LENGTH: PositiveInt | None = None  # default: GRPC_MAX_MESSAGE_LENGTH
    GRPC_HTTP2_CONNECTION_WINDOW_SIZE: WindowSize = 4 * 1024 * 1024
    GRPC_HTTP2_STREAM_WINDOW_SIZE: WindowSize = 4 * 1024 * 1024

    # Connection protections (README "Limits and protections"); grpc-go's defaults where it has
    # the same knob. None = never.
    GRPC_MAX_METADATA_SIZE: PositiveInt = 16 * 1024  # advertised SETTINGS_MAX_HEADER_LIST_SIZE
    GRPC_MAX_RESETS_PER_CONNECTION: PositiveInt = 1000  # client RST_STREAMs per interval
    GRPC_RESET_INTERVAL_SECONDS: Annotated[float, Field(gt=0)] = 10.0
    GRPC_KEEPALIVE_MIN_TIME_MS: PositiveInt = 300_000  # client pings closer: strikes
    GRPC_KEEPALIVE_CLIENT_PERMIT_WITHOUT_CALLS: bool = False  # client pings with no call open
    GRPC_MAX_CONNECTION_AGE_MS: PositiveInt | None = None
    GRPC_MAX_CONNECTION_AGE_GRACE_MS: NonNegativeInt | None = None
    GRPC_MAX_CONNECTION_IDLE_MS: PositiveInt | None = None
    GRPC_MAX_CONNECTION_PENDING_BYTES: PositiveInt = 64 * 1024 * 1024
    GRPC_MESSAGE_BODY_TIMEOUT_SECONDS: Annotated[float, Field(gt=0)] = 30.0
    GRPC_MAX_CONNECTIONS: NonNegativeInt = 0  # 0 = no limit

    # TLS (off unless a certificate is given; a client CA turns on mutual TLS)
    GRPC_TLS_CERT_FILE: Path | None = None
    GRPC_TLS_KEY_FILE: Path | None = None
    GRPC_TLS_CLIENT_CA_FILE: Path | None = None

    # Health
    GRPC_HEALTH_CHECK_TIMEOUT_SECONDS: Annotated[float, Field(gt=0)] = 2.0
    GRPC_HEALTH_CHECK_INTERVAL_SECONDS: Annotated[float, Field(gt=0)] = 5.0

    # Middleware switches (the seeds' interceptor settings), in chain order
    GRPC_ENABLE_METRICS: bool = True
    GRPC_ENABLE_AUTH: bool = True
    GRPC_ENABLE_RATE_LIMITING: bool = True
    GRPC_ENABLE_CORRELATION_ID: bool = True
    GRPC_ENABLE_LOGGING: bool = True
    GRPC_ENABLE_ERROR_HANDLING: bool = True

    # Auth: "header" trusts user-id metadata (behind a gateway); "hmac" checks bearer tokens
    GRPC_AUTH_MODE: Literal["header", "hmac"] = "header"
    GRPC_AUTH_HMAC_SECRET: SecretStr | None = None
    GRPC_AUTH_EXEMPT_METHODS: list[str] = Field(
        default_factory=lambda: list(DEFAULT_AUTH_EXEMPT_METHODS)
    )

    # Rate limiting: per caller, plus an optional global limit (0 = none)
    GRPC_RATE_LIMIT_MAX_REQUESTS: PositiveInt = 1000
    GRPC_RATE_LIMIT_WINDOW_SECONDS: PositiveInt = 60
    GRPC_RATE_LIMIT_GLOBAL_MAX_REQUESTS: Annotated[int, Field(ge=0)] = 0
    GRPC_RATE_LIMIT_BACKEND: Literal["auto", "memory", "redis"] = "auto"  # auto: redis if REDIS_URL
    GRPC_RATE_LIMIT_FAIL_MODE: Literal["local", "open", "closed"] = "local"  # while Redis is down
    # Redis leases: a process reserves up to LEASE tokens (at most LEASE_FRACTION of the limit)
    # per script call and spends them locally; 1 = one Redis round trip per request
    GRPC_RATE_LIMIT_LEASE: PositiveInt = 100
    GRPC_RATE_LIMIT_LEASE_FRACTION: Annotated[float, Field(gt=0, le=1)] = 0.01

    # Concurrency: max calls in flight per server (grpcio's maximum_concurrent_rpcs), 0 = no limit
    GRPC_MAX_CONCURRENT_RPCS: Annotated[int, Field(ge=0)] = 0

    # Metrics
    GRPC_METRICS_PORT: Port = 0  # 0 = no /metrics exporter
    GRPC_METRICS_HOST: str | None = None  # default: GRPC_SERVER_HOST
    GRPC_METRICS_BUCKETS: list[float] = Field(
        default_factory=lambda: [
            0.005,
            0.01,
            0.025,
            0.05,
            0.075,
            0.1,
            0.25,
            0.5,
            0.75,
            1.0,
            2.5,
            5.0,
            7.5,
            10.0,
        ]
    )

    # Response cache
    GRPC_CACHE_ENABLED: bool = True
    GRPC_CACHE_L1_TTL_SECONDS: PositiveInt = 300
    GRPC_CACHE_L1_MAX_SIZE: PositiveInt = 100
    GRPC_CACHE_L2_TTL_SECONDS: PositiveInt = 3600
    GRPC_CACHE_DEFAULT_TTL: PositiveInt = 300

    # Shared resources (used only when set)
    REDIS_URL: str | None = None
    REDIS_MAX_CONNECTIONS: PositiveInt = 50
    REDIS_POOL_TIMEOUT_SECONDS: Annotated[float, Field(gt=0)] = 1.0
    REDIS_SOCKET_TIMEOUT_SECONDS: Annotated[float, Field(gt=0)] = 1.0
    REDIS_CONNECT_TIMEOUT_SECONDS: Annotated[float, Field(gt=0)] = 1.0
    REDIS_RETRIES: Annotated[int, Field(ge=0)] = 1
    # the cache's per-call commands over one pipelined connection per database (redis:// and
    # unix:// URLs), not the pool: ~7 us of CPU per command instead of ~50-75 us
    REDIS_MULTIPLEXED: bool = True
    REDIS_REQUIRED_FOR_READINESS: bool = False  # cache and limits degrade without Redis
    REDIS_DB_USER: int = 0
    REDIS_DB_MARKET: int = 1
    REDIS_DB_GRPC: int = 2
    REDIS_DB_RATE_LIMIT: int = 3
    REDIS_DB_SESSION: int = 4
    MONGO_URL: str | None = None
    MONGO_DATABASE: str | None = None  # default: the database named in MONGO_URL
    MONGO_DRIVER: Literal["pymongo", "motor"] = "pymongo"
    MONGO_SERVER_SELECTION_TIMEOUT_MS: PositiveInt = 2000
    MONGO_CONNECT_TIMEOUT_MS: PositiveInt = 2000
    MONGO_MAX_POOL_SIZE: PositiveInt = 50
    DUCKDB_PATH: str = ":memory:"

    # Response cache tiers beyond L1/L2
    GRPC_CACHE_NAMESPACE: str | None = None  # default: SERVICE_NAME
    GRPC_CACHE_SCHEMA_VERSION: str = "1"  # bump to drop every cached entry at once
    GRPC_CACHE_L3_ENABLED: bool = False  # DuckDB tier (DUCKDB_PATH)
    GRPC_CACHE_L3_TTL_SECONDS: PositiveInt = 86_400
    GRPC_CACHE_NEGATIVE_TTL_SECONDS: Annotated[float, Field(ge=0)] = 5.0
    GRPC_CACHE_TIER_TIMEOUT_SECONDS: Annotated[float, Field(gt=0)] = 0.25
    # cache and rate limiter under races, hangs and outages (issue 14)
    GRPC_CACHE_LOAD_TIMEOUT_SECONDS: Annotated[float, Field(gt=0)] = 30.0  # bound of one load
    GRPC_CACHE_FINISH_ORPHANED_LOADS: bool = False  # finish loads every caller left (for the cache)
    MONGO_SOCKET_TIMEOUT_MS: PositiveInt = 10_000  # a hung MongoDB fails a query, not pins it
    MONGO_TIMEOUT_MS: Annotated[int, Field(ge=0)] = 0  # PyMongo timeoutMS per operation; 0: unset

    # Operations (issue 19): worker processes and tracing
    GRPC_WORKERS: Annotated[int, Field(ge=0)] = 1  # processes on one port; 0 = one per CPU
    GRPC_TRACING: Literal["auto", "on", "off"] = "auto"  # auto: on when an OTEL_* exporter is set

    # Connect / gRPC-Web listener (grpcstack.web): the same services over HTTP/1.1 and h2c
    GRPC_HTTP_PORT: Port | None = None  # unset = off; 0 = any free port
    GRPC_HTTP_HOST: str | None = None  # default: GRPC_SERVER_HOST
    GRPC_HTTP_CORS_ORIGINS: list[str] = Field(default_factory=list)  # browser origins, or ["*"]

    @model_validator(mode="after")
    def _check_tls(self) -> ServerSettings:
        if (self.GRPC_TLS_CERT_FILE is None) != (self.GRPC_TLS_KEY_FILE is None):
            raise ValueError("GRPC_TLS_CERT_FILE and GRPC_TLS_KEY_FILE must be set together")
        if self.GRPC_TLS_CLIENT_CA_FILE is not None and self.GRPC_TLS_CERT_FILE is None:
            raise ValueError("GRPC_TLS_CLIENT_CA_FILE needs GRPC_TLS_CERT_FILE/GRPC_TLS_KEY_FILE")
        return self

    @model_validator(mode="after")
    def _check_auth(self) -> ServerSettings:
        if (
            self.GRPC_ENABLE_AUTH
            and self.GRPC_AUTH_MODE == "hmac"
            and not self.GRPC_AUTH_HMAC_SECRET
        ):
            raise ValueError("GRPC_AUTH_MODE=hmac needs GRPC_AUTH_HMAC_SECRET")
        if self.GRPC_RATE_LIMIT_BACKEND == "redis" and not self.REDIS_URL:
            raise ValueError("GRPC_RATE_LIMIT_BACKEND=redis needs REDIS_URL")
        return self

    @property
    def tls_enabled(self) -> bool:
        return self.GRPC_TLS_CERT_FILE is not None

    @classmethod
    def load(cls, **overrides: Any) -> ServerSettings:
        """Read the environment (and `.env`), raising SettingsError naming each bad variable."""
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raise SettingsError(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        name = ".".join(str(part) for part in err["loc"]) or "settings"
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"invalid setting {name}{shown}: {err['msg']}")
    return "\n".join(lines)


# --- client (grpcstack.Client) ------------------------------------------------------------------


class ClientSettings(BaseSettings):
    """What a :class:`grpcstack.Client` reads; every field has a GRPC_CLIENT_* environment name."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        frozen=True,
    )

    GRPC_CLIENT_TARGETS: list[str] = Field(default_factory=list)  # "host:port", round-robin
    GRPC_CLIENT_TIMEOUT_SECONDS: Annotated[float, Field(gt=0)] | None = None  # default deadline
    GRPC_CLIENT_CONNECT_TIMEOUT_SECONDS: Annotated[float, Field(gt=0)] = 5.0
    GRPC_CLIENT_CLOSE_GRACE_SECONDS: NonNegativeFloat = 5.0  # `async with` exit waits for calls
    # reconnect backoff of one target after a failed connect (gRPC connection backoff)
    GRPC_CLIENT_RECONNECT_INITIAL_SECONDS: Annotated[float, Field(gt=0)] = 0.2
    GRPC_CLIENT_RECONNECT_MAX_SECONDS: Annotated[float, Field(gt=0)] = 10.0
    # retry policy of every method without its own (gRFC A6); MAX_ATTEMPTS=1 turns retries off
    GRPC_CLIENT_RETRY_MAX_ATTEMPTS: Annotated[int, Field(ge=1, le=5)] = 3
    GRPC_CLIENT_RETRY_INITIAL_BACKOFF_SECONDS: Annotated[float, Field(gt=0)] = 0.1
    GRPC_CLIENT_RETRY_MAX_BACKOFF_SECONDS: Annotated[float, Field(gt=0)] = 2.0
    GRPC_CLIENT_RETRY_BACKOFF_MULTIPLIER: Annotated[float, Field(gt=0)] = 2.0
    GRPC_CLIENT_RETRYABLE_STATUS_CODES: list[str] = Field(default_factory=lambda: ["UNAVAILABLE"])
    GRPC_CLIENT_WAIT_FOR_READY: bool = False  # no target reachable: wait within the deadline
    GRPC_CLIENT_RETRY_BUFFER_BYTES: PositiveInt = 256 * 1024  # per call; larger calls commit
    # retry throttle per client (token bucket); MAX_TOKENS=0 turns it off
    GRPC_CLIENT_RETRY_THROTTLE_MAX_TOKENS: Annotated[float, Field(ge=0, le=1000)] = 10.0
    GRPC_CLIENT_RETRY_THROTTLE_TOKEN_RATIO: Annotated[float, Field(gt=0)] = 0.1
    GRPC_CLIENT_MAX_RECEIVE_MESSAGE_LENGTH: PositiveInt = 4 * 1024 * 1024
    GRPC_CLIENT_MAX_SEND_MESSAGE_LENGTH: PositiveInt = 2**31 - 1
    GRPC_CLIENT_COMPRESSION: Literal["none", "gzip"] = "none"  # request messages
    GRPC_CLIENT_HTTP2_CONNECTION_WINDOW_SIZE: WindowSize = 4 * 1024 * 1024
    GRPC_CLIENT_HTTP2_STREAM_WINDOW_SIZE: WindowSize = 4 * 1024 * 1024
    GRPC_CLIENT_KEEPALIVE_TIME_MS: PositiveInt | None = None  # None: no client pings
    GRPC_CLIENT_KEEPALIVE_TIMEOUT_MS: PositiveInt = 20_000
    # TLS: on when GRPC_CLIENT_TLS or a CA file is set; a cert/key pair adds mutual TLS
    GRPC_CLIENT_TLS: bool = False
    GRPC_CLIENT_TLS_CA_FILE: Path | None = None
    GRPC_CLIENT_TLS_CERT_FILE: Path | None = None
    GRPC_CLIENT_TLS_KEY_FILE: Path | None = None
    GRPC_CLIENT_TLS_SERVER_NAME: str | None = None  # override of the name checked in the cert
    # identity sent on every call (user-id header / authorization: Bearer)
    GRPC_CLIENT_USER_ID: str | None = None
    GRPC_CLIENT_BEARER_TOKEN: SecretStr | None = None
    # inside a handler: cap outgoing deadlines by the incoming call's, forward its correlation id
    GRPC_CLIENT_PROPAGATE_DEADLINE: bool = True
    GRPC_CLIENT_PROPAGATE_CORRELATION_ID: bool = True
    # inside a handler: send the incoming call's user-id and authorization (the caller's identity)
    # instead of GRPC_CLIENT_USER_ID / GRPC_CLIENT_BEARER_TOKEN; off: a service calls as itself
    GRPC_CLIENT_FORWARD_IDENTITY: bool = False
    # OpenTelemetry CLIENT spans: auto = on when an OTEL_* exporter is set (as GRPC_TRACING)
    GRPC_CLIENT_TRACING: Literal["auto", "on", "off"] = "auto"

    @model_validator(mode="after")
    def _check(self) -> ClientSettings:
        if (self.GRPC_CLIENT_TLS_CERT_FILE is None) != (self.GRPC_CLIENT_TLS_KEY_FILE is None):
            raise ValueError("GRPC_CLIENT_TLS_CERT_FILE and GRPC_CLIENT_TLS_KEY_FILE go together")
        initial = self.GRPC_CLIENT_RETRY_INITIAL_BACKOFF_SECONDS
        if self.GRPC_CLIENT_RETRY_MAX_BACKOFF_SECONDS < initial:
            raise ValueError("GRPC_CLIENT_RETRY_MAX_BACKOFF_SECONDS < the initial backoff")
        return self

    @property
    def tls_enabled(self) -> bool:
        return self.GRPC_CLIENT_TLS or self.GRPC_CLIENT_TLS_CA_FILE is not None

    @classmethod
    def load(cls, **overrides: Any) -> ClientSettings:
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raise SettingsError(describe_validation_error(exc)) from None


# --- typo detection (library issue 13) ------------------------------------------------------

#: environment prefixes of this stack: an unknown name under one of them is reported
CHECKED_PREFIXES = ("GRPC_", "REDIS_", "MONGO_")
#: gRPC core (grpcio) reads these itself: never ours, never reported
FOREIGN_NAMES = frozenset(
    {
        "GRPC_VERBOSITY",
        "GRPC_TRACE",
        "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
        "GRPC_DNS_RESOLVER",
        "GRPC_POLL_STRATEGY",
        "GRPC_ENABLE_FORK_SUPPORT",
        "GRPC_SSL_CIPHER_SUITES",
        "GRPC_ARG_KEEPALIVE_TIME_MS",
        "GRPC_STACKTRACE_MINLOGLEVEL",
    }
)
FOREIGN_PREFIXES = ("GRPC_EXPERIMENTAL_", "GRPC_PYTHON_", "GRPC_GO_", "GRPC_CLIENT_CHANNEL_")
#: how close an unknown name must be to a setting to count as its typo (difflib ratio)
TYPO_CUTOFF = 0.8


def known_names(cls: type[BaseSettings]) -> dict[str, str]:
    """Upper-cased environment name -> field name, for every field of ``cls``."""
    prefix = str(cls.model_config.get("env_prefix") or "")
    names: dict[str, str] = {}
    for name, field in cls.model_fields.items():
        names[(prefix + name).upper()] = name
        if isinstance(field.validation_alias, str):
            names[field.validation_alias.upper()] = name
        if isinstance(field.alias, str):
            names[field.alias.upper()] = name
    return names


def stack_names() -> dict[str, str]:
    """Names of every settings class of grpcstack itself (a client's settings class, say): the
    environment of a process serving and calling holds both, and neither is a typo."""
    names: dict[str, str] = {}
    pending = list(BaseSettings.__subclasses__())
    while pending:
        klass = pending.pop()
        pending.extend(klass.__subclasses__())
        if klass.__module__.startswith("grpcstack.") and not getattr(klass, "hermetic", False):
            names.update(known_names(klass))
    return names


def _suggestion(name: str, known: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(name.upper(), list(known), n=1, cutoff=TYPO_CUTOFF)
    return close[0] if close else None


def check_keywords(cls: type[BaseSettings], values: Mapping[str, Any]) -> None:
    """``ServerSettings(GRPC_ENABLE_AUHT=False)`` must not silently leave auth on."""
    known = known_names(cls)
    lines = []
    for key in values:
        if key.startswith("_") or key.upper() in known:
            continue  # _env_file and friends are pydantic-settings' own arguments
        hint = _suggestion(key, known)
        lines.append(
            f"unknown setting {key} for {cls.__name__}"
            + (f"; did you mean {hint}?" if hint else "")
        )
    if lines:
        raise SettingsError("\n".join(lines))


def _env_files(env_file: Any) -> list[Path]:
    if env_file is None:
        return []
    files = [env_file] if isinstance(env_file, str | os.PathLike) else list(env_file)
    return [Path(f) for f in files if Path(f).is_file()]


def _ours(name: str) -> bool:
    return (
        name.startswith(CHECKED_PREFIXES)
        and name not in FOREIGN_NAMES
        and not name.startswith(FOREIGN_PREFIXES)
    )


def check_environment(cls: type[BaseSettings], env_file: Any) -> None:
    """Unknown GRPC_/REDIS_/MONGO_ names in the environment or .env files.

    A name close to a setting (``GRPC_SERVR_PORT``) is a typo: SettingsError with "did you
    mean". Any other unknown name under those prefixes may belong to another tool
    (``REDIS_PASSWORD`` for redis-cli): a SettingsWarning says it is ignored.
    """
    known = known_names(cls) | stack_names()
    found: dict[str, str] = {}
    for name in os.environ:
        found.setdefault(name.upper(), "the environment")
    for path in _env_files(env_file):
        from dotenv import dotenv_values  # a dependency of pydantic-settings

        for name in dotenv_values(path):
            found.setdefault(name.upper(), str(path))
    errors = []
    for name, where in sorted(found.items()):
        if name in known or not _ours(name):
            continue
        hint = _suggestion(name, known)
        if hint is not None:
            errors.append(f"unknown setting {name} (from {where}); did you mean {hint}?")
        else:
            warnings.warn(
                f"ignoring {name} (from {where}): not a setting of {cls.__name__}",
                SettingsWarning,
                stacklevel=3,
            )
    if errors:
        raise SettingsError("\n".join(errors))


_SOURCE_FIELD = re.compile(r'field "([^"]+)"')


def describe_source_error(exc: SourceError, cls: type[BaseSettings]) -> str:
    """One line for a value pydantic-settings could not decode (complex fields are JSON)."""
    found = _SOURCE_FIELD.search(str(exc))
    field = found.group(1) if found else "settings"
    prefix = str(cls.model_config.get("env_prefix") or "")
    env_name = (prefix + field).upper()
    value = next((v for k, v in os.environ.items() if k.upper() == env_name), None)
    shown = "" if value is None else f" (got {value!r})"
    return (
        f"invalid setting {env_name}{shown}: not valid JSON; "
        'lists are written as JSON, e.g. ["a", "b"] or [0.1, 0.5]'
    )
