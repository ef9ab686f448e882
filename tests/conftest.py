from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from grpcstack import ServerSettings
from grpcstack.testing import bound_socket, channel  # noqa: F401 - re-exported for the tests
from grpcstack.testing import serve as running  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

import provision  # noqa: E402 - tests/ is on the path from here

#: tools that could not be provisioned, and why (their tests fail with the reason)
UNPROVISIONED: dict[str, str] = {}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "tools(*names): installed by tests/provision.py (provision.TOOLS) before the first test",
    )


def pytest_collection_finish(session: pytest.Session) -> None:
    """Provision the tools the collected tests are marked to need: after collection, before the
    first test, so a download never runs under a test's timeout (each install has its own bound).
    `make test` has provisioned them already; then this only reads the markers."""
    if session.config.option.collectonly:
        return
    wanted = {name for item in session.items for m in item.iter_markers("tools") for name in m.args}
    for name in sorted(wanted):
        try:
            provision.TOOLS[name]()
        except Exception as exc:  # reported by the tests that need the tool
            UNPROVISIONED[name] = f"{type(exc).__name__}: {exc}"


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """The order's seed also under `-q` (which hides pytest-randomly's header): a failure that
    depends on the order replays with it."""
    if config.pluginmanager.has_plugin("randomly"):
        seed = config.getoption("randomly_seed")
        terminalreporter.write_line(f"random order: --randomly-seed={seed} replays it")


def unprovisioned(name: str) -> str:
    """The failure message of a test whose tool is missing although it could be installed."""
    why = UNPROVISIONED.get(name, "not provisioned")
    return f"{name}: {why} (run `.venv/bin/python tests/provision.py`)"


def settings(**overrides: Any) -> ServerSettings:
    """Test settings: loopback, any port, and auth off unless a test turns it on."""
    base: dict[str, Any] = {
        "GRPC_SERVER_HOST": "127.0.0.1",
        "GRPC_SERVER_PORT": 0,
        "GRPC_ENABLE_AUTH": False,
    }
    base.update(overrides)
    return ServerSettings(_env_file=None, **base)  # type: ignore[call-arg]


@pytest.fixture(scope="session")
def pb2(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """grpcio stubs (``_pb2``, ``_pb2_grpc``) compiled from protos/ for the grpcio client."""
    import importlib
    import types

    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("pb2")
    protos = ROOT / "protos"
    files = ["common.proto", "ocr.proto", "echo.proto", "llm.proto"]
    files += ["strategy.proto", "market_data.proto", "indicator.proto"]  # the platform's
    include = Path(protoc.__file__).parent / "_proto"
    rc = protoc.main(
        [
            "protoc",
            f"-I{protos}",
            f"-I{include}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            *files,
        ]
    )
    assert rc == 0, "protoc failed"
    sys.path.insert(0, str(out))
    try:  # on the path only while importing: the modules stay in sys.modules
        ns = types.SimpleNamespace()
        for name in ("common", "ocr", "echo", "llm", "strategy", "market_data", "indicator"):
            setattr(ns, name, importlib.import_module(f"{name}_pb2"))
            setattr(ns, f"{name}_grpc", importlib.import_module(f"{name}_pb2_grpc"))
    finally:
        sys.path.remove(str(out))
    return ns


@pytest.fixture
def redis_process(tmp_path: Path) -> Any:
    """A private redis-server on an ephemeral port; always killed at the end."""
    from redis_process import RedisProcess

    proc = RedisProcess(tmp_path)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def mongo_process() -> Any:
    """A private MongoDB wire server (secantusd-py, in memory); always killed at the end."""
    from mongo_process import MongoProcess

    proc = MongoProcess()
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def spans() -> Any:
    """The test's own OpenTelemetry in-memory exporter (tracing tests importorskip the SDK)."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    return InMemorySpanExporter()


@pytest.fixture
def provider(spans: Any) -> Any:
    """A TracerProvider of the test's own (not the global one), exporting into ``spans``."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    try:
        yield provider
    finally:
        provider.shutdown()
