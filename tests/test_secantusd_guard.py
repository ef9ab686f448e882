"""secantusd_guard.py: an embedded secantusd whose parent died ends within its grace period even
when no signal reaches it (the kernel's PR_SET_PDEATHSIG SIGTERM lost, or its stop hanging), and
its on-disk store keeps what was acknowledged before."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest
from platform_util import alive
from pymongo import MongoClient
from redis_process import free_port
from waiting import eventually

from platform_services.embedded_mongo import GUARD

# the platform's stand-in: starts the guard WITHOUT PR_SET_PDEATHSIG, prints its pid, waits
PARENT = """
import os, subprocess, sys
port, storage, log = sys.argv[1:]
with open(log, "ab") as out:
    child = subprocess.Popen(
        [sys.executable, {guard!r}, str(os.getpid()), "1", "--host", "127.0.0.1", "--port", port,
         "--storage-path", storage, "--log-level", "WARNING"],
        stdout=out, stderr=out,
    )
print(child.pid, flush=True)
child.wait()
"""


def answers(port: int) -> bool:
    client: MongoClient[dict[str, object]] = MongoClient(
        "127.0.0.1", port, serverSelectionTimeoutMS=500, directConnection=True
    )
    try:
        client.admin.command("ping")
        return True
    except Exception:
        return False
    finally:
        client.close()


async def start(port: int, storage: Path, log: Path) -> tuple[asyncio.subprocess.Process, int]:
    """The stand-in parent and the pid of the secantusd it started, once that answers."""
    parent = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        PARENT.format(guard=str(GUARD)),
        *(str(port), str(storage), str(log)),
        stdout=asyncio.subprocess.PIPE,
    )
    assert parent.stdout is not None
    child = int(await parent.stdout.readline())
    await eventually(lambda: answers(port), timeout=60, interval=0.1)
    return parent, child


async def end(parent: asyncio.subprocess.Process, child: int) -> None:
    """Both gone (only a failed test finds the child still running)."""
    if parent.returncode is None:
        parent.kill()
        await parent.wait()
    if alive(child):
        os.kill(child, signal.SIGKILL)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="the guard watches its parent on Linux")
async def test_the_guard_ends_secantusd_when_its_parent_dies_and_no_signal_comes(
    tmp_path: Path,
) -> None:
    port, storage, log = free_port(), tmp_path / "mongo", tmp_path / "secantusd.log"
    parent, child = await start(port, storage, log)
    try:
        with MongoClient("127.0.0.1", port, directConnection=True) as client:
            client.platform.kept.insert_one({"_id": 1, "acknowledged": True})
        parent.kill()
        await parent.wait()
        # nobody sends secantusd a signal: its guard ends it, 1 s after the parent died
        await eventually(lambda: not alive(child), timeout=30)
        assert "still running 1 s after its parent died" in log.read_text()
    finally:
        await end(parent, child)
    # ended the way SIGKILL ends it: its journal still has the acknowledged write
    port = free_port()
    parent, child = await start(port, storage, log)
    try:
        with MongoClient("127.0.0.1", port, directConnection=True) as client:
            assert client.platform.kept.find_one({"_id": 1}) == {"_id": 1, "acknowledged": True}
    finally:
        await end(parent, child)
