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
    ns = types.SimpleNamespace()
    for name in ("common", "ocr", "echo", "llm", "strategy", "market_data", "indicator"):
        setattr(ns, name, importlib.import_module(f"{name}_pb2"))
        setattr(ns, f"{name}_grpc", importlib.import_module(f"{name}_pb2_grpc"))
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
