"""An embedded MongoDB wire server for `make run` when MONGO_URL is unset.

It runs SecantusDB's ``secantusd-py`` (PyPI ``secantusdb``, installed by the ``platform`` extra;
through secantusd_guard.py) as a child process on 127.0.0.1 and a free port, with its storage in
a directory (or ``:memory:``). The platform starts it before its resources open and stops it
after they closed.
Set MONGO_URL to use a real MongoDB instead; nothing else changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import shutil
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("platform_services.embedded_mongo")

START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 10.0
#: how long secantusd may outlive a platform killed without stopping it (a clean stop takes 2-3 s)
GUARD_GRACE_SECONDS = STOP_TIMEOUT_SECONDS


class EmbeddedMongoError(RuntimeError):
    """secantusd-py is missing or did not start."""


GUARD = Path(__file__).with_name("secantusd_guard.py")


def find_command() -> list[str]:
    """The command that runs secantusd: through secantusd_guard.py (which bounds how long it can
    outlive this process) when secantusdb is installed in this interpreter, else secantusd-py."""
    if importlib.util.find_spec("secantus") is not None:
        return [sys.executable, str(GUARD), str(os.getpid()), str(GUARD_GRACE_SECONDS)]
    found = shutil.which("secantusd-py")
    if found is None:
        raise EmbeddedMongoError(
            "MONGO_URL is unset and secantusd-py is not installed: pip install -e '.[platform]' "
            "(or make setup), or point MONGO_URL at a MongoDB server"
        )
    return [found]


def die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that makes the kernel send the child SIGTERM when this process dies, even by
    SIGKILL (Linux's PR_SET_PDEATHSIG); None elsewhere or when prctl cannot be found.

    prctl is resolved here, before the fork: the child of a threaded parent (ONNX Runtime's
    threads) must not import or take locks before exec. The signal follows the forking THREAD's
    exit, so start the child from the thread that lives as long as the server (its loop's)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    pr_set_pdeathsig, sigterm = 1, int(signal.SIGTERM)

    def preexec() -> None:
        if prctl(pr_set_pdeathsig, sigterm, 0, 0, 0) != 0:
            return  # not fatal: the child then outlives a killed parent, as it would elsewhere
        if os.getppid() != parent:  # the parent died before prctl: nobody will stop this child
            os._exit(1)

    return preexec


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EmbeddedMongo:
    def __init__(self, storage: str, *, database: str = "platform", log_file: Path | None = None):
        self.storage = storage
        self.database = database
        self.log_file = log_file
        self.host = "127.0.0.1"
        self.port = 0
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"mongodb://{self.host}:{self.port}/{self.database}"

    async def start(self) -> str:
        command = find_command()
        if self.storage != ":memory:":
            Path(self.storage).mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, at start
        # secantusd cannot take a bound socket: pick a port, and retry if another process took it
        for _attempt in range(3):
            self.port = _free_port(self.host)
            out: int | object = asyncio.subprocess.DEVNULL
            if self.log_file is not None:
                self.log_file.parent.mkdir(parents=True, exist_ok=True)
                out = self.log_file.open("ab")
            try:
                self.proc = await asyncio.create_subprocess_exec(
                    *command,
                    *("--host", self.host, "--port", str(self.port)),
                    *("--storage-path", self.storage, "--log-level", "WARNING"),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    # a platform killed with SIGKILL must not leave its MongoDB running: the
                    # kernel asks it to stop, and the guard ends it if that stop hangs
                    preexec_fn=die_with_parent(),
                )
            finally:
                if hasattr(out, "close"):
                    out.close()
            if await self._wait_ready():
                log.info("embedded MongoDB (secantusd) on %s, storage %s", self.url, self.storage)
                return self.url
            await self.stop()
        raise EmbeddedMongoError(
            f"secantusd-py did not start (see {self.log_file or 'its output'})"
        )

    async def _wait_ready(self) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_SECONDS
        assert self.proc is not None
        while loop.time() < deadline:
            if self.proc.returncode is not None:
                return False
            try:
                _, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.proc.wait(), 0.1)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return True
        return False

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        if self.storage == ":memory:":
            proc.kill()  # nothing to flush: do not wait for a clean shutdown
        else:
            proc.terminate()  # WiredTiger closes its files cleanly on SIGTERM
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_SECONDS)
        except TimeoutError:
            proc.kill()
            await proc.wait()
