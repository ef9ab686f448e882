"""`grpcstack bench workers` runs end to end (tiny counts: this checks the harness, not speed), and
its CPU accounting reads what processes really used."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest

from grpcstack.bench import workers

ECHO_REQUEST = bytes.fromhex("0a0568656c6c6f")  # EchoRequest(message="hello")

# a parent that burns ~0.3 s of CPU in a child of its own, then waits to be killed
_SPIN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
_PARENT = (
    "import subprocess, sys, time\n"
    f"child = subprocess.Popen([sys.executable, '-c', {_SPIN!r} + 'time.sleep(60)'])\n"
    "print(child.pid, flush=True)\n"
    "time.sleep(60)\n"
)


def test_cpu_of_a_process_and_its_children_comes_from_proc() -> None:
    machine_before = workers._machine_busy()
    parent = subprocess.Popen([sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        deadline = time.monotonic() + 60  # a loaded machine gives the child its 0.3 s slowly
        while workers._process_cpu(parent.pid).get(child, 0.0) < 0.28:
            assert time.monotonic() < deadline, workers._process_cpu(parent.pid)
            time.sleep(0.05)
        used = workers._process_cpu(parent.pid)
        assert set(used) == {parent.pid, child}
        assert workers._cpu_seconds(parent.pid) >= 0.28
        assert workers._machine_busy() - machine_before >= 0.28
    finally:
        parent.kill()
        parent.wait(10)


def test_projected_ratio_is_bound_by_the_busiest_worker() -> None:
    one = workers.Run(1000, 10_000, 10_000, 10, 4.0, [4.0], 0.1, 1.5, 6.0)
    # the same CPU per call, but 60% of it in one worker: that worker sets the pace
    many = workers.Run(1500, 10_000, 10_000, 10 / 1.5, 4.0, [2.4, 1.6], 0.1, 1.2, 6.5)
    row = workers._row(one, many, 2)
    assert row["ratio"] == 1.5
    assert row["efficiency"] == 1.0
    assert row["one_calls_per_cpu_s"] == row["calls_per_cpu_s_per_worker"] == 2500
    assert row["busiest_worker_share"] == pytest.approx(0.6)
    assert row["projected_ratio"] == pytest.approx(4.0 / 2.4)
    assert row["load1"] == 6.5
    assert row["others_cores"] == pytest.approx((1.5 * 10 + 1.2 * 10 / 1.5) / (10 + 10 / 1.5))


def test_projected_ratio_of_a_timed_round_counts_each_servers_calls() -> None:
    # a timed round: the workers answered 1.8x the calls, the busiest worker used 1.2 CPU s
    one = workers.Run(1000, 5000, 5100, 5, 2.0, [2.0], 0.1, 0.0, 1.0)
    many = workers.Run(1800, 9000, 9100, 5, 3.6, [1.9, 1.7], 0.1, 0.0, 1.0)
    row = workers._row(one, many, 2)
    assert row["one_calls_per_cpu_s"] == 2500 and row["calls_per_cpu_s_per_worker"] == 2500
    assert row["projected_ratio"] == pytest.approx((9000 / 1.9) / 2500)


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load (nghttp2-client) missing")
def test_bench_workers_runs_end_to_end() -> None:
    result = workers.run(
        workers.Options(
            target="platform_services.echo:EchoServer",
            method="/echo.v1.EchoService/Echo",
            message=ECHO_REQUEST,
            workers=2,
            rounds=1,
            duration=1.0,
            connections=8,
            streams=4,
        )
    )
    (row,) = result["rounds"]
    assert row["one"] > 0 and row["many"] > 0 and row["many_calls"] > 0
    assert row["one_calls_per_cpu_s"] > 0 and row["calls_per_cpu_s_per_worker"] > 0
    assert 0.5 <= row["busiest_worker_share"] <= 1.0
    # warm-up and probe exactly, then at least every call h2load saw answered (run() checks
    # the upper bound, the calls it started)
    assert result["verified_ok_calls_many"] >= 2001 + row["many_calls"]
    text = workers.report(result)
    assert "projected" in text and "target >= 1.7 for 2 workers" in text
