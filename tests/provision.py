"""Tools some tests need beyond the venv: virtualenvs for the other supported Pythons and Node's
gRPC packages. Installed once into a cache OUTSIDE the repository (``GRPCSTACK_TEST_CACHE``, else
``$XDG_CACHE_HOME/grpcstack-tests``, else ``~/.cache/grpcstack-tests``), never inside a test.

``.ci/run`` calls ``python tests/provision.py`` before ``make test``; without it, a session fixture
calls the same functions once, with their own time bound, outside any test's timeout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

#: the installs may download: bounded, and far above what a warm cache needs
INSTALL_TIMEOUT = 600

RUNTIME_DEPS = [
    "grpclib==0.4.9",
    "betterproto2[grpclib,protobuf]==0.10.*",
    "pydantic-settings",
    "prometheus-client",
    "googleapis-common-protos",
    "aiocache==0.12.*",
]
NODE_PACKAGES = ["@grpc/grpc-js@1", "@grpc/proto-loader@0.7"]
PYTHONS = ["3.11", "3.12", "3.13"]


def cache_dir() -> Path:
    explicit = os.environ.get("GRPCSTACK_TEST_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "grpcstack-tests"


def find_python(version: str) -> str | None:
    """python{version} on PATH (pyenv shims included) or under ~/.pyenv, if it really runs."""
    candidates = [shutil.which(f"python{version}")]
    candidates += sorted(
        str(p) for p in Path.home().glob(f".pyenv/versions/{version}*/bin/python{version}")
    )
    for candidate in filter(None, candidates):
        try:
            ok = subprocess.run(
                [candidate, "-c", "import venv"], capture_output=True, timeout=60
            ).returncode
        except (OSError, subprocess.TimeoutExpired):
            continue
        if ok == 0:
            return candidate
    return None


def python_with_runtime(version: str) -> str | None:
    """A Python ``version`` with grpcstack's runtime deps (the running one as is); None when no
    such interpreter is installed."""
    if version == f"{sys.version_info.major}.{sys.version_info.minor}":
        return sys.executable
    base = find_python(version)
    if base is None:
        return None
    venv = cache_dir() / "venvs" / version
    python = venv / "bin" / "python"
    marker = venv / ".ready"
    wanted = "\n".join(RUNTIME_DEPS)
    if not marker.exists() or marker.read_text() != wanted:
        subprocess.run([base, "-m", "venv", "--clear", str(venv)], check=True, timeout=120)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *RUNTIME_DEPS],
            check=True,
            timeout=INSTALL_TIMEOUT,
        )
        marker.write_text(wanted)
    return str(python)


def node_modules() -> Path | None:
    """The node_modules directory with Node's gRPC packages; None without node and npm."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return None
    prefix = cache_dir() / "node"
    marker = prefix / ".ready"
    if not (marker.exists() and marker.read_text() == " ".join(NODE_PACKAGES)):
        prefix.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "npm",
                "install",
                "--silent",
                "--no-audit",
                "--no-fund",
                "--prefix",
                str(prefix),
                *NODE_PACKAGES,
            ],
            check=True,
            timeout=INSTALL_TIMEOUT,
        )
        marker.write_text(" ".join(NODE_PACKAGES))
    return prefix / "node_modules"


def main() -> None:
    for version in PYTHONS:
        print(f"python {version}: {python_with_runtime(version) or 'not installed, skipped'}")
    print(f"node packages: {node_modules() or 'node/npm not installed, skipped'}")


if __name__ == "__main__":
    main()
