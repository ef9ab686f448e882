"""`grpcstack protos`: gen/ is exactly what it produces, and every way it can refuse or fail."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from conftest import ROOT

from grpcstack.protos import CodegenError, check_versions

GRPCSTACK = str(Path(sys.executable).parent / "grpcstack")


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def protos_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GRPCSTACK, "protos", *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def test_gen_is_fresh(tmp_path: Path) -> None:
    out = protos_cli(
        "--proto-dir", str(ROOT / "protos"), "--out", str(tmp_path / "gen"), cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert "protos into" in out.stdout
    fresh, committed = _tree(tmp_path / "gen"), _tree(ROOT / "gen")
    assert sorted(fresh) == sorted(committed), "gen/ has missing or extra files: run `make protos`"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"gen/ is stale, run `make protos`: {stale}"


def _project(tmp_path: Path, proto: str) -> Path:
    (tmp_path / "protos").mkdir()
    (tmp_path / "protos" / "shop.proto").write_text(proto)
    return tmp_path


SHOP = 'syntax = "proto3";\npackage shop.v1;\nmessage Item { string id = 1; }\n'


def test_defaults_and_rerun_replace_the_folder(tmp_path: Path) -> None:
    project = _project(tmp_path, SHOP)
    first = protos_cli(cwd=project)
    assert first.returncode == 0, first.stderr
    assert (project / "gen" / "shop" / "v1" / "__init__.py").is_file()
    (project / "gen" / "stale_module.py").write_text("# left over from a deleted proto\n")
    again = protos_cli(cwd=project)
    assert again.returncode == 0, again.stderr
    assert not (project / "gen" / "stale_module.py").exists()
    assert (project / "gen" / "shop" / "v1" / "__init__.py").is_file()


def test_protoc_error_exits_1_and_keeps_the_old_code(tmp_path: Path) -> None:
    project = _project(tmp_path, SHOP)
    assert protos_cli(cwd=project).returncode == 0
    before = _tree(project / "gen")
    (project / "protos" / "shop.proto").write_text('syntax = "proto3";\nmessage Broken {\n')
    out = protos_cli(cwd=project)
    assert out.returncode == 1
    assert "protoc failed" in out.stderr and "shop.proto" in out.stderr
    assert _tree(project / "gen") == before
    assert [p.name for p in project.iterdir() if p.name.startswith(".gen")] == []


def test_refuses_to_empty_a_folder_of_other_files(tmp_path: Path) -> None:
    project = _project(tmp_path, SHOP)
    (project / "src").mkdir()
    (project / "src" / "notes.md").write_text("my work\n")
    out = protos_cli("--out", "src", cwd=project)
    assert out.returncode == 2
    assert "refusing to empty" in out.stderr and "notes.md" in out.stderr
    assert (project / "src" / "notes.md").read_text() == "my work\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--proto-dir", "nowhere"), "proto folder 'nowhere' does not exist"),
        (("--proto-dir", "empty"), "no .proto files under 'empty'"),
        (("--out", "."), "would delete the protos or the project"),
        (("--out", "protos"), "would delete the protos or the project"),
    ],
)
def test_usage_errors_are_one_line_exit_2(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    project = _project(tmp_path, SHOP)
    (project / "empty").mkdir()
    out = protos_cli(*args, cwd=project)
    assert out.returncode == 2
    assert message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert (project / "protos" / "shop.proto").exists()


def test_installed_compiler_matches_the_runtime() -> None:
    check_versions(version("betterproto2"), version("betterproto2-compiler"))


def test_mismatched_compiler_names_the_version_to_install() -> None:
    runtime = version("betterproto2")
    major, minor = runtime.split(".")[:2]
    other = f"{major}.{int(minor) + 1}.0"
    with pytest.raises(CodegenError) as err:
        check_versions(runtime, other)
    assert f"betterproto2-compiler {other} does not match the betterproto2 runtime {runtime}" in (
        str(err.value)
    )
    assert f"pip install 'betterproto2-compiler=={major}.{minor}.*'" in str(err.value)
