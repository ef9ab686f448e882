"""Optional parts of the stack and the extra that installs each.

The base install is the stack; Redis, MongoDB and DuckDB clients are extras. A setting that needs
one of them fails at start with the ``pip install`` line to run, not with a bare ImportError from
deep inside a call.
"""

from __future__ import annotations

import importlib.util

#: importable module -> (distribution, extra of grpcstack that installs it)
EXTRAS: dict[str, tuple[str, str]] = {
    "redis": ("redis", "redis"),
    "pymongo": ("pymongo", "mongo"),
    "motor": ("motor", "motor"),
    "duckdb": ("duckdb", "duckdb"),
    "grpc_tools": ("grpcio-tools", "codegen"),
    "betterproto2_compiler": ("betterproto2-compiler", "codegen"),
}


class MissingExtraError(ImportError):
    """An optional dependency a setting or feature needs is not installed."""


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def require(module: str, needed_by: str) -> None:
    """Raise MissingExtraError naming the extra to install when ``module`` is not importable."""
    if installed(module):
        return
    dist, extra = EXTRAS[module]
    raise MissingExtraError(
        f"{needed_by} needs the {dist!r} package, which is not installed: "
        f"pip install 'grpcstack[{extra}]'",
        name=module,
    )
