"""Two grpcstack instances behind a real HAProxy (deploy/haproxy/haproxy.cfg) on 127.0.0.1,
sharing one redis-server: calls spread, one global rate limit, cross-instance L1 invalidation,
and a drain that loses no call."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from calls import call_grpclib
from client_helpers import client_settings
from conftest import ROOT
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import StreamTerminatedError
from hostile.h2peer import frame, grpc_headers
from ops_process import TARGET, ServeProcess, sample, scrape
from redis_process import free_port
from waiting import eventually

from gen.echo.v1 import EchoRequest, EchoResponse, EchoServiceStub

HAPROXY = shutil.which("haproxy")
CONFIG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"

pytestmark = [
    pytest.mark.skipif(HAPROXY is None, reason="haproxy not installed (apt-get install haproxy)"),
    pytest.mark.timeout(240),
]


class Tally:
    """Calls counted by outcome; OK answers of Expand/Collect counted per instance (pid)."""

    def __init__(self) -> None:
        self.ok = 0
        self.refused = 0
        self.ok_by_pid: dict[int, int] = {}

    async def __call__(self, ch: Channel, method: str, request: EchoRequest) -> Any:
        out = await call_grpclib(ch, method, request, None, 10.0)
        if out.status is Status.OK:
            self.ok += 1
            if method != "Echo":  # Echo answers the pid of the instance that loaded it
                pid = int(out.responses[0].message)
                self.ok_by_pid[pid] = self.ok_by_pid.get(pid, 0) + 1
        else:
            assert out.status is Status.RESOURCE_EXHAUSTED, (out.status, out.message)
            self.refused += 1
        return out


class HAProxy:
    def __init__(self, log: Path, backends: list[int]) -> None:
        assert HAPROXY is not None
        self.port = free_port()
        self.env = dict(
            os.environ,
            GRPC_LB_BIND=f"127.0.0.1:{self.port}",
            PLATFORM_1=f"127.0.0.1:{backends[0]}",
            PLATFORM_2=f"127.0.0.1:{backends[1]}",
        )
        self.log = log.open("wb")
        self.warmup_calls = 0
        self.proc = subprocess.Popen(
            [HAPROXY, "-db", "-f", str(CONFIG)], env=self.env, stdout=self.log, stderr=self.log
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


@pytest.fixture
def platform(tmp_path: Path, redis_process: Any) -> Iterator[Any]:
    """start(env) -> (instances, haproxy): two `grpcstack serve` behind HAProxy, one Redis."""
    started: list[Any] = []

    async def start(env: dict[str, str]) -> tuple[list[ServeProcess], HAProxy]:
        full = {"REDIS_URL": redis_process.url, **env}
        instances = [
            ServeProcess(tmp_path / f"platform{i}.log", TARGET, "--port", "0", env=full)
            for i in (1, 2)
        ]
        started.extend(instances)
        for inst in instances:
            found = await inst.wait_for(r"on port (\d+)")
            inst.port = int(found.group(1))
        # HAProxy binds a port number: another process may take the probed one first, so retry
        for attempt in range(5):
            log = tmp_path / f"haproxy{attempt}.log"
            lb = HAProxy(log, [i.port for i in instances])
            started.append(lb)
            try:
                lb.warmup_calls = await wait_for_backends(lb, {i.proc.pid for i in instances})
                return instances, lb
            except AssertionError:
                if lb.proc.poll() is None or b"Address already in use" not in log.read_bytes():
                    raise
        raise AssertionError("no free port for HAProxy in 5 tries")

    yield start
    for item in started:
        if isinstance(item, HAProxy):
            item.stop()
        else:
            item.close()


async def who(ch: Channel, **request: Any) -> tuple[Status, int | None, str | None]:
    out = await call_grpclib(ch, "Expand", EchoRequest(**request), None, 30.0)
    pid = int(out.responses[0].message) if out.responses else None
    return out.status, pid, out.message


async def wait_for_backends(lb: HAProxy, pids: set[int]) -> int:
    """Calls through the balancer until every backend answered (health checks pass first);
    returns how many passed."""
    seen: set[int] = set()
    passed = 0
    ch = Channel("127.0.0.1", lb.port)
    try:
        async with asyncio.timeout(60):
            while seen != pids:
                assert lb.proc.poll() is None, "haproxy exited"
                try:
                    status, pid, _ = await who(ch)
                except (ConnectionError, OSError):
                    status, pid = Status.UNAVAILABLE, None
                if status is Status.OK and pid is not None:
                    seen.add(pid)
                    passed += 1
                else:
                    await asyncio.sleep(0.1)
    finally:
        ch.close()
    return passed


def test_the_shipped_config_is_valid() -> None:
    assert HAPROXY is not None
    env = dict(
        os.environ,
        GRPC_LB_BIND="127.0.0.1:50051",
        PLATFORM_1="127.0.0.1:1",
        PLATFORM_2="127.0.0.1:2",
    )
    out = subprocess.run(
        [HAPROXY, "-c", "-f", str(CONFIG)], env=env, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stdout + out.stderr


async def test_calls_spread_limits_hold_and_invalidation_crosses_instances(platform: Any) -> None:
    limit = 120
    instances, lb = await platform(
        {
            "GRPC_RATE_LIMIT_GLOBAL_MAX_REQUESTS": str(limit),
            "GRPC_RATE_LIMIT_WINDOW_SECONDS": "3600",
        }
    )
    a, b = instances
    via_lb = Channel("127.0.0.1", lb.port)
    to_a, to_b = Channel("127.0.0.1", a.port), Channel("127.0.0.1", b.port)
    tally = Tally()  # every call passed counts against the global limit
    tally.ok = lb.warmup_calls
    try:
        # one client connection, calls balanced per call over both instances
        pids = []
        for _ in range(10):
            out = await tally(via_lb, "Expand", EchoRequest())
            pids.append(int(out.responses[0].message))
        assert set(pids) == {a.proc.pid, b.proc.pid}
        assert abs(pids.count(a.proc.pid) - pids.count(b.proc.pid)) <= 2  # round robin
        # L1 invalidation: B's L1 holds the entry A loaded; an invalidation through the balancer
        # (whichever instance takes it) reaches both L1s
        first = (await tally(to_a, "Echo", EchoRequest(message="k"))).responses[0].message
        assert first.startswith(f"{a.proc.pid}:")
        for _ in range(2):  # the L2 hit, then the L1 hit
            again = await tally(to_b, "Echo", EchoRequest(message="k"))
            assert again.responses[0].message == first
        await tally(via_lb, "Collect", EchoRequest(message="k"))
        async with asyncio.timeout(30):
            for ch in (to_a, to_b):
                while (await tally(ch, "Echo", EchoRequest(message="k"))).responses[
                    0
                ].message == first:
                    await asyncio.sleep(0.05)
        assert tally.ok < limit - 20
        # one global rate limit across both instances, through the balancer
        while tally.refused < 10:
            assert tally.ok + tally.refused < limit * 2, "the limit never held"
            out = await tally(via_lb, "Expand", EchoRequest())
            if out.status is not Status.OK:
                assert f"global rate limit of {limit}" in (out.message or "")
        assert limit - 1 <= tally.ok <= limit  # -1: a window boundary weighs the previous one
        assert tally.ok_by_pid[a.proc.pid] > 10 and tally.ok_by_pid[b.proc.pid] > 10
    finally:
        for ch in (via_lb, to_a, to_b):
            ch.close()


async def grpcio_who(channel: Any, **request: Any) -> tuple[Status, int | None, str | None]:
    import grpc

    expand = channel.unary_stream(
        "/echo.v1.EchoService/Expand",
        request_serializer=bytes,
        response_deserializer=EchoResponse.parse,
    )
    try:
        replies = [r async for r in expand(EchoRequest(**request), timeout=30)]
    except grpc.aio.AioRpcError as err:
        return Status(err.code().value[0]), None, err.details()
    return Status.OK, int(replies[0].message), None


async def grpclib_who(channel: Channel, **request: Any) -> tuple[Status, int | None, str | None]:
    try:
        return await who(channel, **request)
    except StreamTerminatedError as exc:  # a reset stream, not a gRPC status
        return Status.UNAVAILABLE, None, f"stream reset: {exc}"


async def stack_who(client: Any, **request: Any) -> tuple[Status, int | None, str | None]:
    from grpcstack.client import RpcError

    try:
        stub = client.stub(EchoServiceStub)
        replies = [r async for r in stub.expand(EchoRequest(**request), timeout=30)]
    except RpcError as err:
        return err.status, None, err.message
    return Status.OK, int(replies[0].message), None


async def drain_under_load(platform: Any, client_kind: str) -> None:
    """8 clients call through the balancer while instance A gets SIGTERM: every call succeeds."""
    import grpc

    instances, lb = await platform({"GRPC_SERVER_GRACE_PERIOD_SECONDS": "10"})
    a, b = instances
    results: list[tuple[Status, int | None, str | None]] = []
    stop = asyncio.Event()

    async def client() -> None:
        if client_kind == "grpcio":
            async with grpc.aio.insecure_channel(f"127.0.0.1:{lb.port}") as ch:
                for _ in range(400):  # bounded
                    if stop.is_set():
                        return
                    results.append(await grpcio_who(ch, sleep_seconds=0.05))
            return
        if client_kind == "grpcstack":
            from grpcstack.client import Client

            async with Client(f"127.0.0.1:{lb.port}", settings=client_settings()) as stack:
                for _ in range(400):  # bounded
                    if stop.is_set():
                        return
                    results.append(await stack_who(stack, sleep_seconds=0.05))
            return
        ch = Channel("127.0.0.1", lb.port)
        try:
            for _ in range(400):  # bounded
                if stop.is_set():
                    return
                results.append(await grpclib_who(ch, sleep_seconds=0.05))
        finally:
            ch.close()

    clients = [asyncio.ensure_future(client()) for _ in range(8)]
    async with asyncio.timeout(60):  # traffic reaches A before it drains
        while sum(1 for r in results if r[1] == a.proc.pid) < 20:
            await asyncio.sleep(0.05)
    a.signal(signal.SIGTERM)
    assert await a.wait_exit() == 0
    after = len(results)
    async with asyncio.timeout(60):  # and B carries on alone
        while len(results) < after + 50:
            await asyncio.sleep(0.05)
    stop.set()
    await asyncio.gather(*clients)
    assert {r[1] for r in results[after + 8 :]} == {b.proc.pid}
    failed = [r for r in results if r[0] is not Status.OK]
    assert not failed, f"{len(failed)} of {len(results)} calls failed, first: {failed[:3]}"


async def test_draining_one_instance_loses_no_call(platform: Any) -> None:
    """grpcio's client retries a stream the server refused (never processed) by itself (gRFC A6
    transparent retry), so no call is lost across the drain."""
    await drain_under_load(platform, "grpcio")


async def test_draining_one_instance_with_the_stack_client_loses_no_call(platform: Any) -> None:
    """grpcstack.Client retries a refused stream transparently too (and UNAVAILABLE by its default
    policy while nothing was received), so its calls all succeed across the drain. (HAProxy ends
    a response without its trailers when the backend's socket is reset before it parsed them:
    the draining instance closes only after a PING behind its last answer is acked, and its
    process exits only once its sockets are closed.)"""
    await drain_under_load(platform, "grpcstack")


@pytest.mark.xfail(
    strict=False,
    reason="HAProxy 2.6 (Debian 12) hands streams it opened after the draining server's final "
    "GOAWAY back to the client as REFUSED_STREAM (retry-on refused-stream needs HAProxy >= 2.8), "
    "and grpclib's client does not retry them transparently as grpcio's does",
)
async def test_draining_one_instance_with_a_grpclib_client(platform: Any) -> None:
    await drain_under_load(platform, "grpclib")


class StalledClient:
    """One raw HTTP/2 connection whose streams start with a zero window: HAProxy can pass it no
    DATA until ``open_window``, so the answer's tail waits unparsed in HAProxy."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.h2.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0}
        )
        self.h2.initiate_connection()
        self.data = b""
        self.ends: list[str] = []  # how the stream ended: "trailers", "ended", "reset", "eof"
        self.trailers: dict[str, str] = {}

    def call(self, path: str, request: EchoRequest) -> int:
        sid = self.h2.get_next_available_stream_id()
        # a client known to ride GOAWAY
        self.h2.send_headers(sid, grpc_headers(path, ("user-agent", "grpc-go/1.70.0")))
        body = frame(bytes(request))
        size = self.h2.max_outbound_frame_size
        for start in range(0, len(body), size):
            last = start + size >= len(body)
            self.h2.send_data(sid, body[start : start + size], end_stream=last)
        self.writer.write(self.h2.data_to_send())
        return sid

    def open_window(self, sid: int) -> None:
        self.h2.increment_flow_control_window(2**24)
        self.h2.increment_flow_control_window(2**24, stream_id=sid)
        self.writer.write(self.h2.data_to_send())

    async def read_to_the_end(self, sid: int) -> None:
        async with asyncio.timeout(30):
            while not self.ends:
                data = await self.reader.read(65536)
                if not data:
                    self.ends.append("eof")
                    return
                for event in self.h2.receive_data(data):
                    if isinstance(event, h2.events.DataReceived):
                        self.data += event.data
                        self.h2.acknowledge_received_data(event.flow_controlled_length, sid)
                    elif isinstance(event, h2.events.TrailersReceived):
                        self.trailers = dict(event.headers)
                        self.ends.append("trailers")
                    elif isinstance(event, h2.events.StreamEnded) and not self.ends:
                        self.ends.append("ended")
                    elif isinstance(event, h2.events.StreamReset):
                        self.ends.append("reset")
                self.writer.write(self.h2.data_to_send())


def started_calls(metrics_port: int, method: str) -> float:
    try:
        text = scrape(metrics_port)
    except OSError:  # the exporter is not up yet
        return 0.0
    return sample(text, "grpc_server_started_total", grpc_method=method)


async def test_a_stalled_client_gets_the_whole_answer_of_an_instance_that_exits(
    tmp_path: Path,
) -> None:
    """A call answered while its instance drains, to a client that reads nothing for 2 s after
    the answer was written: meanwhile HAProxy holds the answer's tail (DATA, trailers) unparsed,
    and had the instance's socket closed then (its process exiting right after its FIN), HAProxy
    would end the response truncated, with END_STREAM and no trailers. The instance closes only
    once a PING written behind its answer is acked (within the stop's grace), and its process
    exits only once its sockets are closed."""
    metrics = free_port()
    instance = ServeProcess(
        tmp_path / "echo.log",
        "platform_services.echo:EchoServer",
        "--port",
        "0",
        env={"GRPC_METRICS_PORT": str(metrics), "GRPC_SERVER_GRACE_PERIOD_SECONDS": "10"},
    )
    lb: HAProxy | None = None
    try:
        port = int((await instance.wait_for(r"on port (\d+)")).group(1))
        for attempt in range(5):  # HAProxy binds a probed port: another process may take it
            log = tmp_path / f"haproxy{attempt}.log"
            lb = HAProxy(log, [port, port])
            ch = Channel("127.0.0.1", lb.port)
            try:
                async with asyncio.timeout(60):  # until its health checks pass
                    while True:
                        assert lb.proc.poll() is None, log.read_text()
                        try:
                            out = await call_grpclib(ch, "Echo", EchoRequest(message="w"), None, 5)
                            if out.status is Status.OK:
                                break
                        except (ConnectionError, OSError, StreamTerminatedError):
                            pass
                        await asyncio.sleep(0.1)
                break
            except AssertionError:
                if lb.proc.poll() is None or b"Address already in use" not in log.read_bytes():
                    raise
                lb.stop()
            finally:
                ch.close()
        assert lb is not None
        message = "x" * 50_000  # more than HAProxy holds for a stream that cannot send
        client = StalledClient(*await asyncio.open_connection("127.0.0.1", lb.port))
        sid = client.call(
            "/echo.v1.EchoService/Echo", EchoRequest(message=message, sleep_seconds=0.5)
        )
        await eventually(lambda: started_calls(metrics, "Echo") >= 2, timeout=30, interval=0.05)
        instance.signal(signal.SIGTERM)  # while the call runs: answered during the drain
        await eventually(lambda: instance.text().count('"grpc.method":"Echo"') >= 2, timeout=30)
        with contextlib.suppress(TimeoutError):  # the client reads nothing for 2 s ...
            await instance.wait_exit(timeout=2.0)  # ... and the instance waits for it
        client.open_window(sid)
        await client.read_to_the_end(sid)
        client.writer.close()
        assert await instance.wait_exit() == 0
        assert client.ends == ["trailers"], (client.ends, len(client.data))
        assert client.trailers.get("grpc-status") == "0", client.trailers
        assert EchoResponse.parse(client.data[5:]).message == message
    finally:
        if lb is not None:
            lb.stop()
        instance.close()
