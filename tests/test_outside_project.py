"""grpcstack as a user meets it: a wheel in a fresh venv, a project folder outside the repository.

Builds the wheel, checks it holds `grpcstack` only, installs it into a new venv under /tmp, writes
the README's "Your own project" files into a folder of their own, and from there: `grpcstack protos`
without the codegen extra (a clear error), then with it (`make protos`), the missing-extra errors,
`make test` (the user's own pytest tests), `grpcstack serve` called with grpcurl (the README's line)
and a grpcio client. The venv's Python must import the user's `gen`, and no `gen` or
`platform_services` anywhere else.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import provision
import pytest
from cli_process import start_command
from conftest import ROOT, unprovisioned

BIN = Path(sys.executable).parent
SECTION = "## Your own project"


def readme_files() -> dict[str, str]:
    """The files of the README's "Your own project" section, by their path."""
    text = (ROOT / "README.md").read_text().split(SECTION, 1)[1].split("\n## ", 1)[0]
    files = dict(re.findall(r"^`([\w./-]+)`[^\n]*:\n\n```\w*\n(.*?)```", text, re.S | re.M))
    return files


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text().split(SECTION, 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_section_has_every_file() -> None:
    files = readme_files()
    assert set(files) == {
        "pyproject.toml",
        "Makefile",
        "protos/inventory/v1/inventory.proto",
        "inventory/server.py",
        "tests/test_inventory.py",
    }
    assert "\tgrpcstack protos --proto-dir protos --out gen" in files["Makefile"]
    assert "invalidate_request" in files["inventory/server.py"]
    assert "error_map" in files["inventory/server.py"]


def run(
    argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def user_env(venv: Path) -> dict[str, str]:
    """A shell with the user's venv activated: nothing of this repository on any path."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}
        and not k.upper().startswith(("GRPC_", "REDIS_", "MONGO_"))
    }
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", "")])
    env["VIRTUAL_ENV"] = str(venv)
    env["GRPC_SERVER_HOST"] = "127.0.0.1"
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    built = run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(out)],
        cwd=out,
        env=dict(os.environ),
        timeout=600,
    )
    assert built.returncode == 0, built.stderr
    (path,) = out.glob("grpcstack-*.whl")
    return path


@pytest.mark.timeout(600)  # builds the wheel
def test_wheel_holds_grpcstack_only(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {
        "grpcstack",
        next(n.split("/")[0] for n in names if ".dist-info/" in n),
    }
    assert "grpcstack/py.typed" in names
    metadata = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith(".dist-info/METADATA"))
    )
    requires = [
        line for line in metadata.decode().splitlines() if line.startswith("Requires-Dist:")
    ]
    base = [line for line in requires if "extra ==" not in line]
    for heavy in ("redis", "pymongo", "duckdb", "Pillow", "grpcio-tools"):
        assert not any(heavy.lower() in line.lower() for line in base), base


@pytest.mark.tools("wheelhouse")  # the wheel's requirements, downloaded by tests/provision.py
@pytest.mark.timeout(600)  # builds the wheel, pip installs (from the wheelhouse) into a new venv
async def test_user_project_outside_the_repository(
    wheel: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    house = provision.wheelhouse(install=False)
    if house is None:
        pytest.fail(unprovisioned("wheelhouse"))
    home = tmp_path_factory.mktemp("user")
    assert ROOT not in home.parents
    venv, project = home / "venv", home / "inventory-service"
    made = run([sys.executable, "-m", "venv", str(venv)], cwd=home, env=dict(os.environ))
    assert made.returncode == 0, made.stderr
    env = user_env(venv)
    # pip resolves the wheel's requirements for real, from the provisioned wheels only
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-compile"]
    pip += ["--no-index", "--find-links", str(house)]
    installed = run([*pip, str(wheel)], cwd=home, env=env, timeout=300)
    assert installed.returncode == 0, installed.stderr

    for path, text in readme_files().items():
        (project / path).parent.mkdir(parents=True, exist_ok=True)
        (project / path).write_text(text)
    (project / "inventory" / "__init__.py").write_text("")

    # the base install: no compiler, no heavy clients, no gen/platform_services of ours
    protos = run(["grpcstack", "protos"], cwd=project, env=env)
    assert protos.returncode == 2
    assert protos.stderr.strip() == (
        "grpcstack protos: grpcstack protos needs the 'grpcio-tools' package, which is not "
        "installed: pip install 'grpcstack[codegen]'"
    )
    python = str(venv / "bin" / "python")
    for module in ("gen", "platform_services", "redis", "pymongo", "duckdb", "PIL"):
        probe = run([python, "-c", f"import {module}"], cwd=home, env=env)
        assert probe.returncode != 0, f"{module} is importable in a base install"
        assert f"No module named '{module}'" in probe.stderr

    extras = run(
        [*pip, f"{wheel}[codegen]", *provision.USER_EXTRAS], cwd=home, env=env, timeout=300
    )
    assert extras.returncode == 0, extras.stderr
    make = run(["make", "protos"], cwd=project, env=env)
    assert make.returncode == 0, make.stdout + make.stderr
    assert (project / "gen" / "inventory" / "v1" / "__init__.py").is_file()

    # the user's gen is the one imported, from a script run in the project folder
    where = run([python, "-c", "import gen.inventory.v1 as m; print(m.__file__)"], project, env)
    assert where.stdout.strip() == str(project / "gen" / "inventory" / "v1" / "__init__.py")

    target = "inventory.server:InventoryServer"
    for name, value, extra in (
        ("REDIS_URL", "redis://127.0.0.1:1", "redis"),
        ("MONGO_URL", "mongodb://127.0.0.1:1/db", "mongo"),
        ("GRPC_CACHE_L3_ENABLED", "true", "duckdb"),
    ):
        missing = run(
            ["grpcstack", "serve", target, "--port", "0"], project, {**env, name: value}, 120
        )
        assert missing.returncode == 2, missing.stderr
        assert missing.stderr.strip().endswith(f"pip install 'grpcstack[{extra}]'")
        assert missing.stderr.startswith(f"grpcstack: {name} needs the ")
        assert len(missing.stderr.strip().splitlines()) == 1

    tests = run(["make", "test"], cwd=project, env=env, timeout=600)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "3 passed" in tests.stdout

    proc, port = await start_command(
        ["grpcstack", "serve", target, "--port", "0"], env=env, cwd=str(project)
    )
    try:
        await _grpcurl_as_in_readme(port, env)
        await asyncio.to_thread(_grpcio_calls, project, port, home)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _grpcurl_as_in_readme(port: int, env: dict[str, str]) -> None:
    (line,) = [c for c in readme_commands() if c.startswith("grpcurl ")]
    argv = shlex.split(line.replace("127.0.0.1:50051", f"127.0.0.1:{port}"))
    argv[0] = str(BIN / "grpcurl")
    out = await asyncio.to_thread(run, argv, Path.cwd(), env, 60)
    assert out.returncode == 0, out.stderr
    assert '"id": "apple"' in out.stdout and '"stock": 3' in out.stdout


def _grpcio_calls(project: Path, port: int, home: Path) -> None:
    """The official grpcio client, from stubs compiled here (in the test's own venv)."""
    import grpc
    from grpc_tools import protoc

    src, out = home / "pb2src", home / "pb2"
    src.mkdir()
    out.mkdir()
    proto = (project / "protos" / "inventory" / "v1" / "inventory.proto").read_text()
    (src / "outside_inventory_e2e.proto").write_text(proto)
    assert protoc.main(["protoc", f"-I{src}", f"--python_out={out}", f"--grpc_python_out={out}",
                        "outside_inventory_e2e.proto"]) == 0  # fmt: skip
    sys.path.insert(0, str(out))
    try:
        import outside_inventory_e2e_pb2 as pb
        import outside_inventory_e2e_pb2_grpc as pb_grpc
    finally:
        sys.path.remove(str(out))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub: Any = pb_grpc.InventoryServiceStub(ch)
        md = [("user-id", "grpcio")]
        assert stub.GetItem(pb.GetItemRequest(id="pear"), metadata=md, timeout=10).stock == 0
        item, call = stub.SetStock.with_call(
            pb.SetStockRequest(id="pear", stock=4), metadata=md, timeout=10
        )
        assert item.stock == 4
        assert ("x-changed-by", "grpcio") in list(call.trailing_metadata())
        assert stub.GetItem(pb.GetItemRequest(id="pear"), metadata=md, timeout=10).stock == 4
        listed = stub.ListItems(pb.ListItemsRequest(min_stock=1), metadata=md, timeout=10)
        assert [i.id for i in listed] == ["apple", "pear"]
        with pytest.raises(grpc.RpcError) as err:
            stub.GetItem(pb.GetItemRequest(id="plum"), metadata=md, timeout=10)
        assert err.value.code() is grpc.StatusCode.NOT_FOUND
        assert err.value.details() == "no item 'plum'"
