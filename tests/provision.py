"""Tools some tests need beyond the venv: virtualenvs for the other supported Pythons, Node's
packages (grpc-js; Connect-ES and buf) and a wheelhouse for the user's venv in
test_outside_project. Installed once into a cache OUTSIDE the repository (``GRPCSTACK_TEST_CACHE``,
else ``$XDG_CACHE_HOME/grpcstack-tests``, else ``~/.cache/grpcstack-tests``), never inside a test.

``make test`` runs ``python tests/provision.py`` first; a bare ``pytest`` provisions what the
collected tests are marked to need (``@pytest.mark.tools(...)``, see conftest.py) after collection,
before the first test, outside every test's timeout. Tests only look the tools up
(``install=False``): a tool that could not be provisioned fails its tests with the reason.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

#: the installs may download: bounded, and far above what a warm cache needs
INSTALL_TIMEOUT = 600

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_DEPS = [
    "grpclib==0.4.9",
    "betterproto2[grpclib,protobuf]==0.10.*",
    "pydantic-settings",
    "prometheus-client",
    "googleapis-common-protos",
    "aiocache==0.12.*",
]
#: node prefixes in the cache and their packages (separate prefixes: a branch that knows only one
#: set never reinstalls the other's)
NODE_SETS = {
    "node": ["@grpc/grpc-js@1", "@grpc/proto-loader@0.7"],
    "node-connect": [
        "@connectrpc/connect@2.3.0",
        "@connectrpc/connect-web@2.3.0",
        "@connectrpc/connect-node@2.3.0",
        "@bufbuild/protobuf@2",
        "@bufbuild/buf@1",
    ],
}
PYTHONS = ["3.11", "3.12", "3.13"]
#: what the user of test_outside_project installs next to the grpcstack wheel
USER_EXTRAS = ["pytest", "pytest-asyncio"]


def cache_dir() -> Path:
    explicit = os.environ.get("GRPCSTACK_TEST_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "grpcstack-tests"


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    """One installer per cache entry at a time (other checkouts share the cache)."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _ready(marker: Path, wanted: str, install: Callable[[], None] | None, name: str) -> bool:
    """Whether ``marker`` records ``wanted``; runs ``install`` (under the lock) when it does not."""
    if marker.exists() and marker.read_text() == wanted:
        return True
    if install is None:
        return False
    with _locked(name):
        if not (marker.exists() and marker.read_text() == wanted):
            install()
            marker.write_text(wanted)
    return True


def _run(argv: list[str], timeout: float = INSTALL_TIMEOUT) -> None:
    """Run an installer; its output only when it fails (pip warns about this machine's indexes)."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-20:]
        raise RuntimeError(f"{' '.join(argv[:4])} ... failed:\n" + "\n".join(tail))


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


def python_with_runtime(version: str, install: bool = True) -> str | None:
    """A Python ``version`` with grpcstack's runtime deps (the running one as is); None when no
    such interpreter is installed (or, with ``install=False``, its venv is not provisioned)."""
    if version == f"{sys.version_info.major}.{sys.version_info.minor}":
        return sys.executable
    base = find_python(version)
    if base is None:
        return None
    venv = cache_dir() / "venvs" / version
    python = venv / "bin" / "python"

    def make() -> None:
        _run([base, "-m", "venv", "--clear", str(venv)], timeout=120)
        _run([str(python), "-m", "pip", "install", "-q", *RUNTIME_DEPS])

    wanted = "\n".join(RUNTIME_DEPS)
    ok = _ready(venv / ".ready", wanted, make if install else None, f"python{version}")
    return str(python) if ok else None


def node_available() -> bool:
    return shutil.which("node") is not None and shutil.which("npm") is not None


def node_modules(name: str = "node", install: bool = True) -> Path | None:
    """The node_modules directory with the packages of ``NODE_SETS[name]``; None without node and
    npm (or, with ``install=False``, when they are not provisioned)."""
    if not node_available():
        return None
    packages = NODE_SETS[name]
    prefix = cache_dir() / name

    def npm_install() -> None:
        prefix.mkdir(parents=True, exist_ok=True)
        argv = ["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(prefix)]
        _run([*argv, *packages])

    ok = _ready(prefix / ".ready", " ".join(packages), npm_install if install else None, name)
    return prefix / "node_modules" if ok else None


def user_requirements() -> list[str]:
    """What a user's ``pip install 'grpcstack[codegen]' pytest pytest-asyncio`` pulls in: the
    wheel's own requirements, read from pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *project["optional-dependencies"]["codegen"], *USER_EXTRAS]


def wheelhouse(install: bool = True) -> Path | None:
    """Wheels of everything the grpcstack wheel needs (with its codegen extra) and the user's
    pytest, for this Python: test_outside_project's venv installs from here with ``--no-index``,
    so that test resolves for real but never downloads."""
    tag = f"{sys.version_info.major}.{sys.version_info.minor}"
    house = cache_dir() / "wheelhouse" / tag
    requirements = user_requirements()

    def download() -> None:
        house.mkdir(parents=True, exist_ok=True)
        _run([sys.executable, "-m", "pip", "download", "-q", "-d", str(house), *requirements])

    wanted = "\n".join(requirements)
    ok = _ready(house / ".ready", wanted, download if install else None, f"wheelhouse{tag}")
    return house if ok else None


#: what ``@pytest.mark.tools(name)`` provisions (conftest.py), by name
TOOLS: dict[str, Callable[[], object]] = {
    "pythons": lambda: [python_with_runtime(version) for version in PYTHONS],
    "node": lambda: node_modules("node"),
    "node-connect": lambda: node_modules("node-connect"),
    "wheelhouse": wheelhouse,
}


def main() -> None:
    for version in PYTHONS:
        print(f"python {version}: {python_with_runtime(version) or 'not installed, skipped'}")
    for name in NODE_SETS:
        print(f"{name} packages: {node_modules(name) or 'node/npm not installed, skipped'}")
    print(f"wheelhouse: {wheelhouse()}")


if __name__ == "__main__":
    main()
