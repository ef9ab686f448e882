"""Shared helpers of the platform tests: settings in a temporary directory, metadata, metrics,
whether a process still runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from platform_services.server import PlatformServer
from platform_services.settings import PlatformSettings


def platform_settings(root: Path, **overrides: Any) -> PlatformSettings:
    """Embedded defaults, everything under ``root``: secantusd in memory, a DuckDB file."""
    values: dict[str, Any] = {
        "GRPC_SERVER_HOST": "127.0.0.1",
        "GRPC_SERVER_PORT": 0,
        "PLATFORM_DATA_DIR": root,
        "PLATFORM_MONGO_STORAGE": ":memory:",
        "DUCKDB_PATH": str(root / "market.duckdb"),
        "MARKET_DATA_PARQUET_ROOT": root / "parquet",
        "OCR_DATA_ROOT": root / "images",
        "GRPC_RATE_LIMIT_MAX_REQUESTS": 100_000,
    }
    values.update(overrides)
    return PlatformSettings(_env_file=None, **values)  # type: ignore[call-arg]


def platform(root: Path, **overrides: Any) -> PlatformServer:
    return PlatformServer(platform_settings(root, **overrides))


def user(name: str) -> dict[str, str]:
    return {"user-id": name}


def cache_count(server: PlatformServer, metric: str, method: str, layer: str) -> float:
    """grpcstack_cache_{hits,misses}_total of one method and tier (0 when never counted)."""
    value = server.metrics_registry.get_sample_value(
        f"grpcstack_cache_{metric}_total",
        {"service": server.settings.SERVICE_NAME, "method": method, "layer": layer},
    )
    return value or 0.0


def loads(server: PlatformServer, method: str) -> float:
    value = server.metrics_registry.get_sample_value(
        "grpcstack_cache_loads_total",
        {"service": server.settings.SERVICE_NAME, "method": method},
    )
    return value or 0.0


def alive(pid: int) -> bool:
    """Running (a zombie nobody reaped yet has stopped too)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
