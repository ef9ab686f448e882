"""Where a server's CPU goes: py-spy (the ``bench`` extra) on a running process, self time.

``record(pid, seconds)`` samples the process (non-idle samples only) and returns the share of
self time per package (h2, hpack, hyperframe, grpclib, grpcstack, asyncio, ...) and the top leaf
frames, which is what `grpcstack bench stacks --profile` prints for the lead tuning the transport.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*):\d+\)$")
_LINE = re.compile(r":\d+\)$")


def _package(path: str) -> str:
    parts = Path(path).parts
    if path.startswith("<"):
        return path.split(".")[0].strip("<>") if path.startswith("<grpcstack") else path
    if not Path(path).is_absolute():  # py-spy shortens paths on sys.path: "h2/connection.py"
        return parts[0].removesuffix(".py")
    for marker in ("site-packages", "src"):
        if marker in parts:
            rest = parts[parts.index(marker) + 1 :]
            return rest[0].removesuffix(".py") if rest else path
    if "asyncio" in parts:
        return "asyncio"
    return path if path.startswith("<") else Path(path).stem


def summarize(raw: str, top: int = 15) -> dict[str, Any]:
    by_package: Counter[str] = Counter()
    by_frame: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()  # the stack's own frames, with what they call
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        leaf = stack.split(";")[-1]
        m = _FRAME.match(leaf)
        package = _package(m.group("file")) if m else leaf
        by_package[package] += n
        by_frame[leaf] += n
        # per function, not per line: a frame counts once per sample however often it recurs
        for frame in {_LINE.sub(")", f) for f in stack.split(";")}:
            if "grpcstack" in frame or "platform_services" in frame:
                inclusive[frame] += n
        total += n
    if not total:
        return {"samples": 0, "packages": {}, "frames": {}}
    return {
        "samples": total,
        "packages": {k: round(100 * v / total, 1) for k, v in by_package.most_common()},
        "frames": {k: round(100 * v / total, 1) for k, v in by_frame.most_common(top)},
        "inclusive": {k: round(100 * v / total, 1) for k, v in inclusive.most_common(2 * top)},
    }


def record(pid: int, seconds: float) -> dict[str, Any]:
    """Sample ``pid`` for ``seconds``; raises RuntimeError when py-spy is missing or fails."""
    binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(binary).exists():
        raise RuntimeError("py-spy not found: pip install '.[bench]'")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "profile.txt"
        argv = [binary, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds)))]
        argv += ["--format", "raw", "--nonblocking", "--output", str(out)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
        if done.returncode != 0 or not out.exists():
            raise RuntimeError(f"py-spy failed: {done.stderr[-500:]}")
        return summarize(out.read_text())


def text(profile: dict[str, Any], title: str) -> str:
    lines = [f"{title}: py-spy self time, {profile['samples']} samples"]
    lines.append("  by package: " + ", ".join(f"{k} {v}%" for k, v in profile["packages"].items()))
    lines += [f"  {v:5.1f}%  {k}" for k, v in profile["frames"].items()]
    lines.append("  inclusive (the stack's frames and their callees):")
    lines += [f"  {v:5.1f}%  {k}" for k, v in profile.get("inclusive", {}).items()]
    return "\n".join(lines)
