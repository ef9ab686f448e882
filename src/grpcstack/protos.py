"""`grpcstack protos`: betterproto2 code for every .proto of a folder, in ONE protoc run.

One run matters: betterproto2 writes one module per proto package plus shared modules
(``google/protobuf``, the message pool), so a second run over other files would overwrite them.
The output folder is replaced as a whole, and only once protoc succeeded, so a failed run leaves
the previous code in place. The compiler (``grpcstack[codegen]``) must be the runtime's minor
version: betterproto2 0.x changes generated code between minors.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .extras import MissingExtraError, require

#: what this stack's server, client, codec and reflection need from generated code
BETTERPROTO2_OPTIONS = "client_generation=async,server_generation=async,google_protobuf_descriptors"
PLUGIN = "protoc-gen-python_betterproto2"
#: files an output folder may hold for it to be emptied without asking
GENERATED_SUFFIXES = frozenset({".py", ".pyi", ".pyc", ".typed"})


class CodegenError(Exception):
    """Code generation cannot run or failed; ``exit_code`` is what the CLI exits with."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Generated:
    protos: list[str]
    files: int
    out: Path


def _minor(ver: str) -> tuple[str, ...]:
    return tuple(ver.split(".")[:2])


def check_versions(runtime: str, compiler: str) -> None:
    """The compiler must be the runtime's major.minor (betterproto2 0.x breaks between minors)."""
    if _minor(runtime) != _minor(compiler):
        wanted = ".".join(_minor(runtime))
        raise CodegenError(
            f"betterproto2-compiler {compiler} does not match the betterproto2 runtime {runtime}: "
            f"pip install 'betterproto2-compiler=={wanted}.*' (or 'grpcstack[codegen]')"
        )


def find_plugin() -> str:
    """The betterproto2 protoc plugin: beside this interpreter first, then on PATH."""
    for path in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent), None):
        found = shutil.which(PLUGIN, path=path)
        if found:
            return found
    raise CodegenError(
        f"{PLUGIN} is not on PATH nor beside {sys.executable}: pip install 'grpcstack[codegen]'"
    )


def check_toolchain() -> str:
    """Raise CodegenError unless the compiler is installed and matches the runtime; the plugin."""
    try:
        require("grpc_tools", "grpcstack protos")
        require("betterproto2_compiler", "grpcstack protos")
    except MissingExtraError as exc:
        raise CodegenError(str(exc)) from None
    try:
        check_versions(version("betterproto2"), version("betterproto2-compiler"))
    except PackageNotFoundError as exc:
        raise CodegenError(
            f"{exc.name} is not installed: pip install 'grpcstack[codegen]'"
        ) from None
    return find_plugin()


def find_protos(proto_dir: Path) -> list[str]:
    if not proto_dir.is_dir():
        raise CodegenError(f"proto folder {str(proto_dir)!r} does not exist")
    protos = sorted(p.relative_to(proto_dir).as_posix() for p in proto_dir.rglob("*.proto"))
    if not protos:
        raise CodegenError(f"no .proto files under {str(proto_dir)!r}")
    return protos


def check_output(out: Path, proto_dir: Path) -> None:
    """Refuse to empty a folder that is not generated code: a typo in --out must not delete work."""
    out, proto_dir = out.resolve(), proto_dir.resolve()
    if out == Path.cwd().resolve() or out == proto_dir or out in proto_dir.parents:
        raise CodegenError(f"--out {str(out)!r} would delete the protos or the project: pick gen/")
    if not out.exists():
        return
    if not out.is_dir():
        raise CodegenError(f"--out {str(out)!r} is a file, not a folder")
    foreign = [p for p in out.rglob("*") if p.is_file() and p.suffix not in GENERATED_SUFFIXES]
    if foreign:
        names = ", ".join(str(p.relative_to(out)) for p in foreign[:3])
        raise CodegenError(
            f"refusing to empty {str(out)!r}: it holds files protoc did not write ({names})"
        )


def generate(
    proto_dir: Path | str = "protos",
    out: Path | str = "gen",
    includes: list[Path | str] | None = None,
) -> Generated:
    """Generate ``out`` from every .proto under ``proto_dir``; replace ``out`` on success only."""
    proto_dir, out = Path(proto_dir), Path(out)
    plugin = check_toolchain()
    protos = find_protos(proto_dir)
    check_output(out, proto_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent)).resolve()
    staging.chmod(0o755)  # mkdtemp's 0700 would become gen/'s mode
    try:
        command = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",  # as __main__ it adds the well-known types' include folder
            f"-I{proto_dir.resolve()}",
            *(f"-I{Path(inc).resolve()}" for inc in includes or ()),
            f"--plugin={PLUGIN}={plugin}",
            f"--python_betterproto2_out={staging}",
            f"--python_betterproto2_opt={BETTERPROTO2_OPTIONS}",
            *protos,
        ]
        env = dict(
            os.environ, PATH=os.pathsep.join([str(Path(plugin).parent), os.environ.get("PATH", "")])
        )
        done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=proto_dir)
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip()
            raise CodegenError(f"protoc failed (exit {done.returncode}):\n{detail}", exit_code=1)
        files = sum(1 for p in staging.rglob("*") if p.is_file())
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return Generated(protos, files, out)
