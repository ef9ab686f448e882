"""Setting typos and undecodable values: errors naming the variable, in code and on the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from grpcstack import ServerSettings, SettingsError
from grpcstack.settings import SettingsWarning

GRPCSTACK = str(Path(sys.executable).parent / "grpcstack")


class ShopSettings(ServerSettings):
    SERVICE_NAME: str = "shop"
    GRPC_SHOP_PAGE_SIZE: int = 20  # a subclass's own GRPC_ name is a known setting


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in list(os.environ):
        if name.upper().startswith(("GRPC_", "REDIS_", "MONGO_")):
            monkeypatch.delenv(name)


def test_keyword_typo_raises_with_suggestion() -> None:
    with pytest.raises(SettingsError) as err:
        ServerSettings(GRPC_ENABLE_AUHT=False)
    assert str(err.value) == (
        "unknown setting GRPC_ENABLE_AUHT for ServerSettings; did you mean GRPC_ENABLE_AUTH?"
    )


def test_keyword_without_close_match_still_raises() -> None:
    with pytest.raises(SettingsError, match=r"^unknown setting COLOUR for ShopSettings$"):
        ShopSettings(COLOUR="blue")


def test_keywords_are_case_insensitive_like_the_environment() -> None:
    assert ServerSettings(grpc_enable_auth=False).GRPC_ENABLE_AUTH is False
    assert ShopSettings(GRPC_SHOP_PAGE_SIZE=5).GRPC_SHOP_PAGE_SIZE == 5


def test_environment_typo_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPC_SERVR_PORT", "6000")
    with pytest.raises(SettingsError) as err:
        ServerSettings()
    assert str(err.value) == (
        "unknown setting GRPC_SERVR_PORT (from the environment); did you mean GRPC_SERVER_PORT?"
    )


def test_dotenv_typo_raises(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("SERVICE_NAME=x\nGRPC_ENABLE_AUTHH=false\n")
    with pytest.raises(SettingsError) as err:
        ServerSettings()
    assert str(err.value) == (
        "unknown setting GRPC_ENABLE_AUTHH (from .env); did you mean GRPC_ENABLE_AUTH?"
    )
    # an explicit _env_file=None does not read it
    assert ServerSettings(_env_file=None).GRPC_ENABLE_AUTH is True  # type: ignore[call-arg]


def test_unknown_name_far_from_any_setting_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_PASSWORD", "for-redis-cli")
    with pytest.warns(SettingsWarning, match="ignoring REDIS_PASSWORD .*not a setting of"):
        settings = ServerSettings()
    assert settings.REDIS_URL is None


def test_grpc_core_variables_are_not_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    import warnings

    monkeypatch.setenv("GRPC_VERBOSITY", "debug")
    monkeypatch.setenv("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", "/etc/ssl/certs/ca-certificates.crt")
    monkeypatch.setenv("GRPC_EXPERIMENTAL_XDS_FEDERATION", "true")
    monkeypatch.setenv("GRPC_SHOP_PAGE_SIZE", "50")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ShopSettings().GRPC_SHOP_PAGE_SIZE == 50


@pytest.mark.parametrize(
    ("name", "value"),
    [("GRPC_AUTH_EXEMPT_METHODS", "notjson"), ("GRPC_METRICS_BUCKETS", "abc")],
)
def test_bad_json_list_is_a_settings_error(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as err:
        ServerSettings()
    assert str(err.value).startswith(f"invalid setting {name} (got {value!r}): not valid JSON")


def test_invalid_value_in_code_is_a_settings_error() -> None:
    with pytest.raises(SettingsError) as err:
        ServerSettings(GRPC_SERVER_PORT=70000)
    assert str(err.value).startswith("invalid setting GRPC_SERVER_PORT (got 70000)")
    assert err.value.__cause__ is None and err.value.__suppress_context__


def _serve(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("GRPC_", "REDIS_"))}
    full.update(env)
    return subprocess.run(
        [GRPCSTACK, "serve", "platform_services.echo:EchoServer", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env=full,
        cwd=tmp_path,
    )


@pytest.mark.parametrize(
    ("env", "line"),
    [
        (
            {"GRPC_AUTH_EXEMPT_METHODS": "notjson"},
            "grpcstack: invalid setting GRPC_AUTH_EXEMPT_METHODS (got 'notjson'): not valid JSON",
        ),
        (
            {"GRPC_METRICS_BUCKETS": "abc"},
            "grpcstack: invalid setting GRPC_METRICS_BUCKETS (got 'abc'): not valid JSON",
        ),
        (
            {"GRPC_SERVR_PORT": "6000"},
            "grpcstack: unknown setting GRPC_SERVR_PORT (from the environment); "
            "did you mean GRPC_SERVER_PORT?",
        ),
        (
            {"GRPC_ENABLE_AUTH": "maybe"},
            "grpcstack: invalid setting GRPC_ENABLE_AUTH (got 'maybe')",
        ),
    ],
)
def test_cli_invalid_setting_is_one_line_exit_2(
    tmp_path: Path, env: dict[str, str], line: str
) -> None:
    out = _serve(tmp_path, **env)
    assert out.returncode == 2
    assert out.stderr.startswith(line)
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_cli_dotenv_typo_exit_2(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("GRPC_ENABLE_AUTHH=false\n")
    out = _serve(tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "grpcstack: unknown setting GRPC_ENABLE_AUTHH (from .env); did you mean GRPC_ENABLE_AUTH?"
    )


def test_cli_warns_in_one_line_about_names_it_ignores(tmp_path: Path) -> None:
    out = _serve(tmp_path, REDIS_PASSWORD="for-redis-cli", GRPC_ENABLE_AUTH="maybe")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert lines[0] == (
        "grpcstack: warning: ignoring REDIS_PASSWORD (from the environment): "
        "not a setting of ServerSettings"
    )
    assert lines[1].startswith("grpcstack: invalid setting GRPC_ENABLE_AUTH (got 'maybe')")
    assert len(lines) == 2


def test_names_of_other_stack_settings_classes_are_known(monkeypatch: pytest.MonkeyPatch) -> None:
    """A settings class elsewhere in grpcstack (e.g. a client's) owns its names: not typos."""
    import warnings

    from pydantic_settings import BaseSettings

    class ClientSideSettings(BaseSettings):
        GRPC_CLIENT_RETRY_ATTEMPTS: int = 3

    ClientSideSettings.__module__ = "grpcstack.client_side_test"
    monkeypatch.setenv("GRPC_CLIENT_RETRY_ATTEMPTS", "5")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ServerSettings()
