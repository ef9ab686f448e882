"""Settings: environment, .env, per-service subclasses, and errors naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from grpcstack import ServerSettings, SettingsError


class StrategySettings(ServerSettings):
    """A per-service override, written the way seed 000 writes it."""

    SERVICE_NAME: str = "strategy-service"
    GRPC_RATE_LIMIT_MAX_REQUESTS: int = 2000


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in ("GRPC_SERVER_PORT", "SERVICE_NAME", "GRPC_RATE_LIMIT_MAX_REQUESTS"):
        monkeypatch.delenv(name, raising=False)


def test_defaults_match_the_seeds() -> None:
    s = ServerSettings.load()
    assert s.GRPC_SERVER_PORT == 50051
    assert s.GRPC_SERVER_ENABLE_REFLECTION is False
    assert s.GRPC_KEEPALIVE_TIME_MS == 30_000 and s.GRPC_KEEPALIVE_TIMEOUT_MS == 10_000
    assert s.GRPC_MAX_CONCURRENT_STREAMS == 100
    assert s.GRPC_MAX_MESSAGE_LENGTH == 10 * 1024 * 1024
    assert (s.GRPC_RATE_LIMIT_MAX_REQUESTS, s.GRPC_RATE_LIMIT_WINDOW_SECONDS) == (1000, 60)
    assert (s.REDIS_DB_GRPC, s.REDIS_DB_RATE_LIMIT) == (2, 3)
    assert "/grpc.health.v1.Health/Check" in s.GRPC_AUTH_EXEMPT_METHODS


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPC_SERVER_PORT", "6000")
    monkeypatch.setenv("GRPC_ENABLE_AUTH", "false")
    monkeypatch.setenv("GRPC_AUTH_EXEMPT_METHODS", '["/a.B/C"]')
    s = ServerSettings.load()
    assert s.GRPC_SERVER_PORT == 6000
    assert s.GRPC_ENABLE_AUTH is False
    assert s.GRPC_AUTH_EXEMPT_METHODS == ["/a.B/C"]


def test_dotenv_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("SERVICE_NAME=from-dotenv\nGRPC_CACHE_L1_MAX_SIZE=200\n")
    s = ServerSettings.load()
    assert s.SERVICE_NAME == "from-dotenv"
    assert s.GRPC_CACHE_L1_MAX_SIZE == 200
    monkeypatch.setenv("SERVICE_NAME", "from-env")  # the environment wins over .env
    assert ServerSettings.load().SERVICE_NAME == "from-env"


def test_per_service_subclass(monkeypatch: pytest.MonkeyPatch) -> None:
    s = StrategySettings.load()
    assert s.SERVICE_NAME == "strategy-service"
    assert s.GRPC_RATE_LIMIT_MAX_REQUESTS == 2000
    monkeypatch.setenv("GRPC_RATE_LIMIT_MAX_REQUESTS", "3000")
    assert StrategySettings.load().GRPC_RATE_LIMIT_MAX_REQUESTS == 3000


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GRPC_SERVER_PORT", "not-a-port"),
        ("GRPC_SERVER_PORT", "70000"),
        ("GRPC_MAX_MESSAGE_LENGTH", "0"),
        ("GRPC_ENABLE_AUTH", "maybe"),
        ("GRPC_HTTP2_STREAM_WINDOW_SIZE", "1000"),
    ],
)
def test_invalid_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as err:
        ServerSettings.load()
    assert f"invalid setting {name}" in str(err.value)
    assert repr(value) in str(err.value)


def test_tls_files_must_come_together(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPC_TLS_CERT_FILE", "/tmp/cert.pem")
    with pytest.raises(SettingsError, match="GRPC_TLS_CERT_FILE and GRPC_TLS_KEY_FILE"):
        ServerSettings.load()


def test_seed_only_settings_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPC_SERVER_MAX_WORKERS", "20")  # no thread pool on asyncio
    assert ServerSettings.load().GRPC_SERVER_MAX_WORKERS == 20
