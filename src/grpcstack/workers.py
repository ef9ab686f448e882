"""``grpcstack serve --workers N``: N server processes on one port, one supervisor.

Python serves one core per process, so the supervisor starts N copies of ``grpcstack serve`` that
each bind the same port with SO_REUSEPORT; the kernel spreads new connections over them (by a hash
of the connection, so one long-lived HTTP/2 connection stays on one worker). The supervisor:

* keeps a bound, never-listening SO_REUSEPORT socket on the port, so ``--port 0`` has one port to
  give every worker and the port stays reserved while a worker restarts;
* waits for every worker to report ready (a pipe), then logs ``... on port P``;
* restarts a worker that exits on its own, with a backoff that grows while it keeps crashing
  (and keeps doing so, as a process manager does: a crash loop shows in the log and the metrics);
* forwards SIGTERM/SIGINT to every worker (each drains as a single server does) and exits when
  all have: 0 when every worker drained cleanly; a second signal is forwarded too (immediate exit);
* serves ONE ``/metrics`` on GRPC_METRICS_PORT for all workers: each worker exposes its own registry
  on a private loopback port, and the supervisor merges them per scrape (see ``metrics_merge``).

State shared between workers goes through Redis as it does between machines: rate limits
(``RedisLimiter``), the L2 cache, and L1 invalidation over the cache's pub/sub channel.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .server import AsyncBaseServer

log = logging.getLogger("grpcstack.workers")

#: environment of a worker: the index and the fd of the pipe to report readiness on
WORKER_INDEX_ENV = "GRPCSTACK_WORKER_INDEX"
READY_FD_ENV = "GRPCSTACK_WORKER_READY_FD"
#: "1" when the worker serves its registry on a private loopback port for the supervisor
WORKER_METRICS_ENV = "GRPCSTACK_WORKER_METRICS"
SUPERVISOR_PID_ENV = "GRPCSTACK_SUPERVISOR_PID"

RESTART_BACKOFF_SECONDS = 0.5
RESTART_BACKOFF_MAX_SECONDS = 10.0
#: a worker that served this long before exiting restarts without the accumulated backoff
STABLE_AFTER_SECONDS = 30.0
READY_TIMEOUT_SECONDS = 60.0


def worker_count(requested: int) -> int:
    """``0`` means one worker per CPU this process may run on."""
    if requested > 0:
        return requested
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound SO_REUSEPORT socket that never listens: it holds the port for the workers."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


# --- the worker side ------------------------------------------------------------------------


def prepare_worker(server: AsyncBaseServer) -> None:
    """In a worker: after start, open a private loopback metrics exporter and report
    ``ready <metrics port>`` to the supervisor. Does nothing outside a supervised worker."""
    fd_text = os.environ.get(READY_FD_ENV)
    if not fd_text:
        return
    fd = int(fd_text)
    _exit_with_supervisor()
    user_after_start = server.after_start

    async def after_start() -> None:
        from .observability import MetricsExporter

        await user_after_start()
        metrics_port = 0
        if os.environ.get(WORKER_METRICS_ENV) == "1":
            # the public port belongs to the supervisor; this one is for it alone
            exporter = MetricsExporter(server.metrics_registry, "127.0.0.1", 0)
            await exporter.start()
            server.metrics_exporter = exporter  # stopped with the server
            metrics_port = exporter.port
        os.write(fd, f"ready {os.getpid()} {metrics_port}\n".encode())
        os.close(fd)

    server.after_start = after_start  # type: ignore[method-assign]


def _exit_with_supervisor() -> None:
    """Workers run in their own session (a Ctrl-C on the terminal reaches the supervisor alone,
    which forwards it once); so that a killed supervisor leaves no orphans, the kernel sends
    SIGTERM to the worker when its parent dies (Linux)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return
    expected = os.environ.get(SUPERVISOR_PID_ENV)
    if expected and os.getppid() != int(expected):  # the parent died before prctl
        raise SystemExit("grpcstack: the supervisor is gone")


def worker_settings_env(port: int, metrics: bool) -> dict[str, str]:
    """Settings every worker gets from the supervisor (environment wins over .env)."""
    return {
        "GRPC_SERVER_REUSE_PORT": "true",
        "GRPC_SERVER_PORT": str(port),
        "GRPC_WORKERS": "1",
        # the public metrics port is the supervisor's; workers get private ones
        "GRPC_METRICS_PORT": "0",
        WORKER_METRICS_ENV: "1" if metrics else "0",
    }


# --- the supervisor -------------------------------------------------------------------------


@dataclass
class Worker:
    index: int
    proc: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    restarts: int = 0
    failures_in_a_row: int = 0
    metrics_port: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)


class Supervisor:
    def __init__(
        self,
        target: str,
        *,
        workers: int,
        host: str,
        port: int,
        metrics_host: str | None = None,
        metrics_port: int = 0,
        grace_period: float = 10.0,
        log_level: str | None = None,
    ) -> None:
        self.target = target
        self.host = host
        self.requested_port = port
        self.port = port
        self.metrics_host = metrics_host or host
        self.metrics_port = metrics_port
        self.grace_period = grace_period
        self.log_level = log_level
        self.workers = [Worker(i) for i in range(workers)]
        self.stopping = False
        self.exit_code = 0
        self._reservation: socket.socket | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._background_tasks: set[asyncio.Task[None]] = set()
        self._exporter: object | None = None
        self._stopped = asyncio.Event()

    # --- processes ---------------------------------------------------------------------

    def _argv(self) -> list[str]:
        argv = [sys.executable, "-m", "grpcstack.cli", "serve", self.target]
        argv += ["--port", str(self.port), "--workers", "1"]
        if self.log_level:
            argv += ["--log-level", self.log_level]
        return argv

    async def _spawn(self, worker: Worker) -> None:
        read_fd, write_fd = os.pipe()
        env = dict(os.environ, **worker_settings_env(self.port, bool(self.metrics_port)))
        env[WORKER_INDEX_ENV] = str(worker.index)
        env[READY_FD_ENV] = str(write_fd)
        env[SUPERVISOR_PID_ENV] = str(os.getpid())
        worker.ready.clear()
        try:
            worker.proc = await asyncio.create_subprocess_exec(
                *self._argv(), env=env, pass_fds=(write_fd,), start_new_session=True
            )
        finally:
            os.close(write_fd)
        worker.started_at = time.monotonic()
        self._background(self._read_ready(worker, read_fd))

    async def _read_ready(self, worker: Worker, read_fd: int) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", 0)
        )
        try:
            line = (await reader.readline()).decode().split()
        finally:
            transport.close()
        if len(line) == 3 and line[0] == "ready":
            worker.metrics_port = int(line[2])
            worker.ready.set()
            log.info("worker %d (pid %s) ready", worker.index, line[1])

    async def _watch(self, worker: Worker) -> None:
        """Restart ``worker`` whenever it exits on its own, until the supervisor stops."""
        while True:
            assert worker.proc is not None
            code = await worker.proc.wait()
            if self.stopping:
                if code != 0:
                    self.exit_code = 1
                log.info("worker %d (pid %d) exited with %d", worker.index, worker.proc.pid, code)
                return
            served = time.monotonic() - worker.started_at
            worker.failures_in_a_row = (
                1 if served > STABLE_AFTER_SECONDS else (worker.failures_in_a_row + 1)
            )
            delay = min(
                RESTART_BACKOFF_MAX_SECONDS,
                RESTART_BACKOFF_SECONDS * 2 ** (worker.failures_in_a_row - 1),
            )
            log.warning(
                "worker %d (pid %d) exited with %d after %.1fs; restarting in %.1fs",
                worker.index,
                worker.proc.pid,
                code,
                served,
                delay,
            )
            try:
                await asyncio.wait_for(self._stopped.wait(), timeout=delay)
                return  # a stop began while waiting
            except TimeoutError:
                pass
            worker.restarts += 1
            await self._spawn(worker)
            if self.stopping:  # the signal came while it was being spawned: pass it on
                await self._signal_all(signal.SIGTERM)

    # --- lifecycle -----------------------------------------------------------------------

    async def run(self) -> int:
        self._reservation = reserve_port(self.host, self.requested_port)
        self.port = self._reservation.getsockname()[1]
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            for worker in self.workers:
                await self._spawn(worker)
            if not await self._wait_ready():
                self.stopping = True
                self._stopped.set()
                await self._signal_all(signal.SIGKILL)
                await asyncio.gather(*(w.proc.wait() for w in self.workers if w.proc))
                return 1
            await self._start_metrics()
            log.info(
                "supervisor (pid %d): %d workers on port %d",
                os.getpid(),
                len(self.workers),
                self.port,
            )
            self._tasks = [loop.create_task(self._watch(w)) for w in self.workers]
            await asyncio.gather(*self._tasks)
            return self.exit_code
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            await self._stop_metrics()
            self._reservation.close()

    async def _wait_ready(self) -> bool:
        """Every worker reports ready, or one exits first / the timeout passes (False)."""

        async def one(worker: Worker) -> bool:
            assert worker.proc is not None
            ready = asyncio.ensure_future(worker.ready.wait())
            died = asyncio.ensure_future(worker.proc.wait())
            done, _ = await asyncio.wait(
                {ready, died}, timeout=READY_TIMEOUT_SECONDS, return_when=asyncio.FIRST_COMPLETED
            )
            ready.cancel()
            if ready in done:
                died.cancel()
                return True
            died.cancel()
            log.error("worker %d did not start", worker.index)
            return False

        results = await asyncio.gather(*(one(w) for w in self.workers))
        return all(results)

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self.stopping:
            log.warning("second %s: workers exit immediately", name)
        else:
            log.info("%s: draining %d workers", name, len(self.workers))
            self.stopping = True
            self._stopped.set()
        self._background(self._signal_all(signum))

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        # the loop keeps only a weak reference to a task: an unreferenced one can be collected
        # mid-await (seen: a worker's readiness reader, so the worker "did not start")
        task = asyncio.get_running_loop().create_task(coro)
        self._background_tasks.add(task)
        task.add_done_callback(self._background_tasks.discard)

    async def _signal_all(self, signum: int) -> None:
        for worker in self.workers:
            if worker.proc is not None and worker.proc.returncode is None:
                try:
                    worker.proc.send_signal(signum)
                except ProcessLookupError:
                    pass

    # --- metrics ---------------------------------------------------------------------------

    async def _start_metrics(self) -> None:
        if not self.metrics_port:
            return
        from .metrics_merge import MergingExporter

        exporter = MergingExporter(self, self.metrics_host, self.metrics_port)
        await exporter.start()
        self._exporter = exporter

    async def _stop_metrics(self) -> None:
        if self._exporter is not None:
            from .metrics_merge import MergingExporter

            assert isinstance(self._exporter, MergingExporter)
            await self._exporter.stop()
            self._exporter = None

    def worker_metrics_ports(self) -> list[int]:
        return [
            w.metrics_port
            for w in self.workers
            if w.metrics_port and w.ready.is_set() and w.proc and w.proc.returncode is None
        ]

    @property
    def restarts(self) -> int:
        return sum(w.restarts for w in self.workers)

    @property
    def alive(self) -> int:
        return sum(1 for w in self.workers if w.proc is not None and w.proc.returncode is None)


def supervise(
    target: str, server: AsyncBaseServer, workers: int, log_level: str | None = None
) -> int:
    """Run the supervisor for ``target`` (whose settings ``server`` was built from)."""
    s = server.settings
    supervisor = Supervisor(
        target,
        workers=workers,
        host=s.GRPC_SERVER_HOST,
        port=s.GRPC_SERVER_PORT,
        metrics_host=s.GRPC_METRICS_HOST,
        metrics_port=s.GRPC_METRICS_PORT,
        grace_period=s.GRPC_SERVER_GRACE_PERIOD_SECONDS,
        log_level=log_level,
    )
    return asyncio.run(supervisor.run())
