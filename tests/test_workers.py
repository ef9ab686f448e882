"""``grpcstack serve --workers N``: one port, N processes, one supervisor, one /metrics."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from calls import call, call_grpclib
from grpclib.client import Channel
from grpclib.const import Status
from ops_process import TARGET, ServeProcess, sample, scrape, spread, who
from redis_process import free_port

from gen.echo.v1 import EchoRequest
from grpcstack.workers import worker_count

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def serve_proc(tmp_path: Path) -> Iterator[Any]:
    """Start ``grpcstack serve`` processes; every one is killed (tree and all) at the end."""
    started: list[ServeProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> ServeProcess:
        proc = ServeProcess(tmp_path / f"serve{len(started)}.log", *args, env=env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.close()


async def two_workers_with_metrics(serve_proc: Any) -> tuple[ServeProcess, int, int]:
    """A supervisor of 2 workers with its /metrics on a probed port; the port is a number (0 means
    off), so another process may take it before the supervisor binds: retry on a new one."""
    for _ in range(5):
        metrics_port = free_port()
        sup = serve_proc(
            TARGET, "--port", "0", "--workers", "2", env={"GRPC_METRICS_PORT": str(metrics_port)}
        )
        try:
            return sup, await sup.wait_ready(2), metrics_port
        except AssertionError:  # it exited
            if "address already in use" not in sup.text().lower():
                raise
    raise AssertionError("no free port for the metrics endpoint in 5 tries")


def test_worker_count_zero_means_one_per_cpu() -> None:
    assert worker_count(3) == 3
    assert worker_count(0) >= 1


async def test_workers_share_one_port_and_one_metrics_endpoint(serve_proc: Any) -> None:
    sup, port, metrics_port = await two_workers_with_metrics(serve_proc)
    workers = sup.worker_pids()
    assert len(workers) == 2
    seen = await spread(port, 2)
    assert set(seen) == workers, f"calls went to {seen}, workers are {workers}"
    calls = sum(seen.values())
    # one scrape shows every worker's calls, summed
    text = scrape(metrics_port)
    labels = {"grpc_service": "echo.v1.EchoService", "grpc_method": "Expand"}
    assert sample(text, "grpc_server_handled_total", grpc_code="OK", **labels) == calls
    assert sample(text, "grpc_server_handling_seconds_count", **labels) == calls
    assert sample(text, "grpcstack_workers") == 2
    assert sample(text, "grpcstack_workers_scraped") == 2
    # OpenMetrics on request (exemplars need it), text format 0.0.4 otherwise
    om = scrape(metrics_port, "application/openmetrics-text; version=1.0.0")
    assert om.rstrip().endswith("# EOF")
    assert sample(om, "grpc_server_handled_total", grpc_code="OK", **labels) == calls
    assert "# EOF" not in text
    promtool = shutil.which("promtool")
    if promtool is not None:  # the merged text exposition is valid and lint-clean
        checked = await asyncio.to_thread(
            subprocess.run,
            [promtool, "check", "metrics"],
            input=text,
            capture_output=True,
            text=True,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr


async def test_a_crashed_worker_is_restarted(serve_proc: Any) -> None:
    sup, port, metrics_port = await two_workers_with_metrics(serve_proc)
    before = sup.worker_pids()
    victim = await who(port)
    assert victim in before
    os.kill(victim, signal.SIGKILL)
    await sup.wait_for(rf"worker \d \(pid {victim}\) exited with -9")
    async with asyncio.timeout(60):
        while len(after := sup.worker_pids()) != 2 or victim in after:
            await asyncio.sleep(0.1)
    replacement = (after - before).pop()
    await sup.wait_for(rf"worker \d \(pid {replacement}\) ready")
    # the port never closed (the other worker served); the new worker serves too
    seen = await spread(port, 2)
    assert replacement in seen
    async with asyncio.timeout(30):
        while sample(scrape(metrics_port), "grpcstack_worker_restarts_total") != 1:
            await asyncio.sleep(0.1)


async def test_sigterm_drains_every_worker_and_exits_0(serve_proc: Any) -> None:
    sup, port, metrics_port = await two_workers_with_metrics(serve_proc)
    workers = sup.worker_pids()
    n = 30
    slow = [
        asyncio.ensure_future(
            call("grpclib", port, "Expand", EchoRequest(sleep_seconds=3.0), timeout=60)
        )
        for _ in range(n)
    ]
    labels = {"grpc_service": "echo.v1.EchoService", "grpc_method": "Expand"}
    async with asyncio.timeout(60):  # every call is running on some worker
        while (
            sample(await asyncio.to_thread(scrape, metrics_port), "grpc_server_in_flight", **labels)
            < n
        ):
            await asyncio.sleep(0.05)
    sup.signal(signal.SIGTERM)
    outcomes = await asyncio.gather(*slow)
    assert [o.status for o in outcomes] == [Status.OK] * n
    served_by = {int(o.responses[0].message) for o in outcomes}
    assert served_by == workers, "30 connections all hashed to one worker"
    assert await sup.wait_exit() == 0
    assert sup.text().count("stopping gracefully") == 2
    assert "exiting immediately" not in sup.text()  # each worker got the signal once


async def test_workers_from_the_setting_and_a_worker_that_cannot_start(serve_proc: Any) -> None:
    bad = serve_proc(TARGET, "--port", "0", env={"GRPC_WORKERS": "2", "WHO_FAIL_START": "1"})
    assert await bad.wait_exit() == 1
    assert "worker 0 did not start" in bad.text() or "worker 1 did not start" in bad.text()
    assert bad.worker_pids() == set()
    # a bad target fails before any worker is spawned, as a single server does
    typo = serve_proc("ops_targets:NoSuchServer", "--workers", "2")
    assert await typo.wait_exit() == 2
    assert "has no attribute" in typo.text()


class Counted:
    """Calls, each counted by outcome (every call counts against the rate limit)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.ok = 0
        self.refused = 0
        self.ok_by_pid: dict[int, int] = {}

    async def __call__(self, method: str, request: EchoRequest, ch: Channel | None = None) -> Any:
        if ch is None:  # a new connection
            out = await call("grpclib", self.port, method, request)
        else:
            out = await call_grpclib(ch, method, request, None, 10.0)
        if out.status is Status.OK:
            self.ok += 1
            if method != "Echo":  # Echo's answer names the process that loaded it
                pid = int(out.responses[0].message)
                self.ok_by_pid[pid] = self.ok_by_pid.get(pid, 0) + 1
        else:
            assert out.status is Status.RESOURCE_EXHAUSTED, (out.status, out.message)
            self.refused += 1
        return out

    async def channel_to(self, pid: int, max_tries: int = 100) -> Channel:
        """A connection that the kernel gave to worker ``pid`` (new ones until it does)."""
        for _ in range(max_tries):
            ch = Channel("127.0.0.1", self.port)
            out = await self("Expand", EchoRequest(), ch)
            if int(out.responses[0].message) == pid:
                return ch
            ch.close()
        raise AssertionError(f"no connection reached worker {pid} in {max_tries} tries")

    async def echo(self, ch: Channel, key: str) -> str:
        out = await self("Echo", EchoRequest(message=key), ch)
        assert out.status is Status.OK
        return str(out.responses[0].message)


async def test_workers_share_rate_limits_and_cache_through_redis(
    serve_proc: Any, redis_process: Any
) -> None:
    limit = 150
    sup = serve_proc(
        TARGET,
        "--port",
        "0",
        "--workers",
        "2",
        env={
            "REDIS_URL": redis_process.url,
            "GRPC_RATE_LIMIT_GLOBAL_MAX_REQUESTS": str(limit),
            "GRPC_RATE_LIMIT_WINDOW_SECONDS": "3600",
        },
    )
    port = await sup.wait_ready(2)
    a, b = sorted(sup.worker_pids())
    calls = Counted(port)
    to_a, to_b = await calls.channel_to(a), await calls.channel_to(b)
    try:
        # L1 invalidation across workers: B holds the value in its L1 (from L2), A invalidates
        first = await calls.echo(to_a, "k")
        assert first.startswith(f"{a}:")
        assert await calls.echo(to_b, "k") == first  # B: an L2 hit, now in B's L1 too
        assert await calls.echo(to_b, "k") == first
        out = await calls("Collect", EchoRequest(message="k"), to_a)
        assert out.status is Status.OK
        # the pub/sub message reaches B's L1 (not at once: wait for it, bounded)
        async with asyncio.timeout(30):
            while (text := await calls.echo(to_b, "k")) == first:
                await asyncio.sleep(0.05)
        assert text.startswith(f"{b}:")  # loaded afresh by B
    finally:
        to_a.close()
        to_b.close()
    assert calls.ok < limit - 20, "the cache part used up the rate limit"
    # one global limit for both workers: calls pass on both until the shared count reaches it
    while calls.refused < 10:
        assert calls.ok + calls.refused < limit * 2, "the limit never held"
        await calls("Expand", EchoRequest())
    assert limit - 1 <= calls.ok <= limit  # -1: a window boundary weighs the previous window
    assert calls.ok_by_pid.get(a, 0) > 5 and calls.ok_by_pid.get(b, 0) > 5
