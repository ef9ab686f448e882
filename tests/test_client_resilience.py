"""The client's resilience against real servers: retries across a restart, pushback, the retry
throttle, refused streams and GOAWAY (retried transparently), round-robin with a killed target."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import pytest
from cli_process import start_cli
from client_helpers import client_settings, echo_server
from conftest import bound_socket, running, settings
from grpclib.const import Status
from h2_peer import H2PeerServer

from gen.echo.v1 import EchoRequest, EchoResponse, EchoServiceStub
from grpcstack.client import (
    Client,
    ClientCallInfo,
    ClientMiddleware,
    MethodConfig,
    RetryPolicy,
    RpcError,
)
from platform_services.echo import EchoServer

ECHO = "/echo.v1.EchoService/Echo"


class Calls(ClientMiddleware):
    """Keeps every finished call's info."""

    def __init__(self) -> None:
        super().__init__()
        self.done: list[ClientCallInfo] = []

    def on_done(self, call: ClientCallInfo) -> None:
        self.done.append(call)


def policy(**kw: Any) -> dict[str, MethodConfig]:
    timeout = kw.pop("timeout", 10.0)
    wait = kw.pop("wait_for_ready", None)
    return {ECHO: MethodConfig(timeout=timeout, retry=RetryPolicy(**kw), wait_for_ready=wait)}


async def test_no_idempotent_call_fails_across_a_server_restart() -> None:
    """The server process dies (SIGKILL) mid-test and a new one starts on the same port: the call
    in flight is retried (UNAVAILABLE, connection lost), the calls after it wait for the new
    server (wait_for_ready) within their deadline; none fails."""
    env = {"GRPC_ENABLE_LOGGING": "false", "GRPC_ENABLE_RATE_LIMITING": "false"}
    proc, port = await start_cli(env=env)
    procs = [proc]
    calls = Calls()
    replies: list[str] = []
    try:
        async with Client(
            f"127.0.0.1:{port}",
            settings=client_settings(GRPC_CLIENT_RETRY_THROTTLE_MAX_TOKENS=0),
            methods=policy(
                max_attempts=5,
                initial_backoff=0.05,
                max_backoff=0.5,
                wait_for_ready=True,
                timeout=60,
            ),
            middlewares=[calls],
        ) as client:
            stub = client.stub(EchoServiceStub)

            async def restart() -> None:
                while len(replies) < 20:  # restart while calls are flowing
                    await asyncio.sleep(0.001)
                os.kill(procs[0].pid, signal.SIGKILL)
                await procs[0].wait()
                again, _ = await start_cli(
                    "platform_services.echo:EchoServer", "--port", str(port), env=env
                )
                procs.append(again)

            restarter = asyncio.ensure_future(restart())
            for i in range(100_000):  # bounded; ends 20 calls after the new server is up
                replies.append((await stub.echo(EchoRequest(message=str(i)))).message)
                if len(procs) == 2 and len(replies) >= 20 and restarter.done():
                    break
            await restarter
            for i in range(20):
                replies.append((await stub.echo(EchoRequest(message=f"after-{i}"))).message)
        assert all(c.status is Status.OK for c in calls.done)
        assert len(replies) >= 40
        # the restart was noticed: some call needed more than one attempt
        assert any(c.attempts > 1 for c in calls.done)
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()


def pushback_peer(value: str) -> H2PeerServer:
    trailers = [("grpc-status", "14"), ("grpc-message", "busy"), ("grpc-retry-pushback-ms", value)]
    return H2PeerServer("trailers_only", trailers=trailers)


async def test_grpc_retry_pushback_ms_sets_the_delay_and_negative_stops_retries() -> None:
    tiny = {"initial_backoff": 0.001, "max_backoff": 0.002}
    async with pushback_peer("300") as peer:
        calls = Calls()
        async with Client(
            f"127.0.0.1:{peer.port}",
            settings=client_settings(),
            methods=policy(max_attempts=2, **tiny),
            middlewares=[calls],
        ) as client:
            started = time.monotonic()
            with pytest.raises(RpcError) as err:
                await client.stub(EchoServiceStub).echo(EchoRequest(message="x"))
            waited = time.monotonic() - started
        assert (err.value.status, err.value.message) == (Status.UNAVAILABLE, "busy")
        assert calls.done[0].attempts == 2 and peer.requests == 2
        assert calls.done[0].extra["pushback"] == 0.3
        assert waited >= 0.3  # the backoff alone would have been at most 2 ms
    async with pushback_peer("-1") as peer:
        calls = Calls()
        async with Client(
            f"127.0.0.1:{peer.port}",
            settings=client_settings(),
            methods=policy(max_attempts=5, **tiny),
            middlewares=[calls],
        ) as client:
            with pytest.raises(RpcError):
                await client.stub(EchoServiceStub).echo(EchoRequest(message="x"))
        assert calls.done[0].attempts == 1 and peer.requests == 1


async def test_rate_limit_retry_after_is_honoured_on_resource_exhausted() -> None:
    server_settings = settings(
        GRPC_RATE_LIMIT_MAX_REQUESTS=1, GRPC_RATE_LIMIT_WINDOW_SECONDS=1, GRPC_ENABLE_AUTH=False
    )
    async with running(EchoServer(server_settings)) as server:
        calls = Calls()
        async with Client(
            f"127.0.0.1:{server.port}",
            settings=client_settings(),
            methods=policy(
                max_attempts=3,
                initial_backoff=0.001,
                max_backoff=0.002,
                retryable_status_codes=frozenset({Status.RESOURCE_EXHAUSTED}),
            ),
            middlewares=[calls],
        ) as client:
            stub = client.stub(EchoServiceStub)
            await stub.echo(EchoRequest(message="first"))
            started = time.monotonic()
            reply = await stub.echo(EchoRequest(message="second"))
            waited = time.monotonic() - started
        assert reply.message == "second"
        second = calls.done[1]
        assert second.attempts >= 2
        pushed = second.extra["pushback"]
        assert pushed > 0.002  # the server's retry-after, not the 2 ms backoff cap
        assert waited >= pushed


async def test_throttle_stops_retries_during_a_sustained_outage() -> None:
    unavailable = EchoRequest(fail_with=f"GRPCError:{Status.UNAVAILABLE.value}")
    async with echo_server() as server:
        calls = Calls()
        async with Client(
            f"127.0.0.1:{server.port}",
            settings=client_settings(
                GRPC_CLIENT_RETRY_THROTTLE_MAX_TOKENS=10, GRPC_CLIENT_RETRY_THROTTLE_TOKEN_RATIO=0.1
            ),
            methods=policy(max_attempts=5, initial_backoff=0.001, max_backoff=0.002),
            middlewares=[calls],
        ) as client:
            for _ in range(20):
                with pytest.raises(RpcError):
                    await client.stub(EchoServiceStub).echo(unavailable)
            assert client.throttle is not None and client.throttle.tokens <= 5
    attempts = [c.attempts for c in calls.done]
    # 10 tokens, retries only above 5: five failures use up the retry budget of the outage
    assert sum(attempts) <= 20 + 5
    assert attempts[-10:] == [1] * 10
    # without the throttle every call would have made 5 attempts
    assert attempts[0] > 1


async def test_refused_stream_is_retried_transparently_on_another_target() -> None:
    async with echo_server() as server, H2PeerServer("refuse") as refusing:
        calls = Calls()
        async with Client(
            [f"127.0.0.1:{refusing.port}", f"127.0.0.1:{server.port}"],
            settings=client_settings(),
            methods=policy(max_attempts=1),  # no retries at all: only transparent ones
            middlewares=[calls],
        ) as client:
            reply = await client.stub(EchoServiceStub).echo(EchoRequest(message="via-refused"))
        assert reply.message == "via-refused"
        assert refusing.requests == 1
        assert (calls.done[0].attempts, calls.done[0].transparent_retries) == (2, 1)


async def test_goaway_before_processing_is_retried_transparently() -> None:
    async with echo_server() as server, H2PeerServer("goaway") as going_away:
        calls = Calls()
        async with Client(
            [f"127.0.0.1:{going_away.port}", f"127.0.0.1:{server.port}"],
            settings=client_settings(),
            methods=policy(max_attempts=1),
            middlewares=[calls],
        ) as client:
            reply = await client.stub(EchoServiceStub).echo(EchoRequest(message="moved"))
        assert reply.message == "moved"
        assert going_away.requests == 1
        assert calls.done[0].transparent_retries == 1


async def test_graceful_goaway_lets_the_covered_stream_finish() -> None:
    reply_bytes = bytes(EchoResponse(message="answered-after-goaway"))
    async with H2PeerServer("goaway_then_answer", reply_bytes) as peer:
        calls = Calls()
        async with Client(
            f"127.0.0.1:{peer.port}",
            settings=client_settings(),
            methods=policy(max_attempts=1),
            middlewares=[calls],
        ) as client:
            reply = await client.stub(EchoServiceStub).echo(EchoRequest(message="x"))
        assert reply.message == "answered-after-goaway"
        assert calls.done[0].attempts == 1


async def test_calls_during_a_drain_go_to_the_other_target() -> None:
    async with echo_server() as draining, echo_server() as staying:
        calls = Calls()
        async with Client(
            [f"127.0.0.1:{draining.port}", f"127.0.0.1:{staying.port}"],
            settings=client_settings(GRPC_CLIENT_RETRY_THROTTLE_MAX_TOKENS=0),
            methods=policy(max_attempts=3, initial_backoff=0.01, max_backoff=0.05),
            middlewares=[calls],
        ) as client:
            stub = client.stub(EchoServiceStub)
            slow = asyncio.ensure_future(stub.echo(EchoRequest(message="slow", sleep_seconds=0.5)))
            await asyncio.wait_for(draining.echo.started.wait(), 10)
            stopping = asyncio.ensure_future(draining.stop(5.0))
            replies = [await stub.echo(EchoRequest(message=str(i))) for i in range(20)]
            assert (await slow).message == "slow"  # in flight at the drain: finished
            await stopping
            replies += [await stub.echo(EchoRequest(message="after")) for _ in range(5)]
        assert all(c.status is Status.OK for c in calls.done)
        assert len(replies) == 25


async def test_round_robin_across_two_servers_with_one_killed() -> None:
    env = {"GRPC_ENABLE_LOGGING": "false", "GRPC_ENABLE_RATE_LIMITING": "false"}
    proc_a, port_a = await start_cli(env=env)
    proc_b, port_b = await start_cli(env=env)
    try:
        calls = Calls()
        async with Client(
            [f"127.0.0.1:{port_a}", f"127.0.0.1:{port_b}"],
            settings=client_settings(
                GRPC_CLIENT_RETRY_THROTTLE_MAX_TOKENS=0,
                # the dead target is tried again only after this (not within the test)
                GRPC_CLIENT_RECONNECT_INITIAL_SECONDS=60,
                GRPC_CLIENT_RECONNECT_MAX_SECONDS=60,
            ),
            methods=policy(max_attempts=3, initial_backoff=0.01, max_backoff=0.05),
            middlewares=[calls],
        ) as client:
            stub = client.stub(EchoServiceStub)
            for i in range(10):
                await stub.echo(EchoRequest(message=str(i)))
            peers = [c.peer for c in calls.done]
            assert peers.count(f"127.0.0.1:{port_a}") == 5
            assert peers.count(f"127.0.0.1:{port_b}") == 5
            os.kill(proc_a.pid, signal.SIGKILL)
            await proc_a.wait()
            calls.done.clear()
            for i in range(20):
                assert (await stub.echo(EchoRequest(message=str(i)))).message == str(i)
            assert all(c.status is Status.OK for c in calls.done)
            # after the first failure the dead target is skipped while it backs off
            later = calls.done[2:]
            assert all(c.peer == f"127.0.0.1:{port_b}" and c.attempts == 1 for c in later)
    finally:
        for proc in (proc_a, proc_b):
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_unreachable_target_fails_fast_with_unavailable() -> None:
    sock = bound_socket()
    port = sock.getsockname()[1]
    sock.close()  # nothing listens here
    async with Client(
        f"127.0.0.1:{port}",
        settings=client_settings(),
        methods=policy(max_attempts=2, initial_backoff=0.001, max_backoff=0.002),
    ) as client:
        with pytest.raises(RpcError) as err:
            await client.stub(EchoServiceStub).echo(EchoRequest(message="x"))
    assert err.value.status is Status.UNAVAILABLE
    assert "failed to connect" in (err.value.message or "")


class SlowFirst(EchoServer):
    """The first Echo hangs (until cancelled); later ones answer at once."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.served = 0
        self.first_cancelled = asyncio.Event()
        original = self.echo.echo

        async def echo(message: EchoRequest) -> EchoResponse:
            self.served += 1
            if self.served == 1:
                try:
                    await asyncio.sleep(60)
                except asyncio.CancelledError:
                    self.first_cancelled.set()
                    raise
            return await original(message)

        self.echo.echo = echo  # type: ignore[method-assign]


async def test_hedging_answers_from_the_second_copy_and_cancels_the_first() -> None:
    from grpcstack.client import HedgingPolicy

    async with running(SlowFirst(settings(GRPC_ENABLE_RATE_LIMITING=False))) as server:
        calls = Calls()
        methods = {ECHO: MethodConfig(timeout=30, hedging=HedgingPolicy(3, hedging_delay=0.05))}
        async with Client(
            f"127.0.0.1:{server.port}",
            settings=client_settings(),
            methods=methods,
            middlewares=[calls],
        ) as client:
            reply = await client.stub(EchoServiceStub).echo(EchoRequest(message="hedged"))
            assert reply.message == "hedged"
            await asyncio.wait_for(server.first_cancelled.wait(), 10)
        assert len(calls.done) == 1  # one call for the middleware
        assert calls.done[0].attempts == 2 and calls.done[0].status is Status.OK


async def test_no_retry_after_the_first_response_message_of_a_stream() -> None:
    unavailable = Status.UNAVAILABLE.value
    async with echo_server() as server:
        calls = Calls()
        async with Client(
            f"127.0.0.1:{server.port}",
            settings=client_settings(),
            methods={
                "echo.v1.EchoService": MethodConfig(
                    retry=RetryPolicy(max_attempts=5, initial_backoff=0.001, max_backoff=0.002)
                )
            },
            middlewares=[calls],
        ) as client:
            got = []
            with pytest.raises(RpcError) as err:
                # two messages, then UNAVAILABLE: committed, so not retried
                request = EchoRequest(message="m", count=2, fail_with=f"GRPCError:{unavailable}")
                async for reply in client.stub(EchoServiceStub).expand(request):
                    got.append(reply.index)
            assert err.value.status is Status.UNAVAILABLE
            assert got == [0, 1]
            # the same failure before any message is retried up to max_attempts
            with pytest.raises(RpcError):
                request = EchoRequest(message="m", count=0, fail_with=f"GRPCError:{unavailable}")
                [r async for r in client.stub(EchoServiceStub).expand(request)]
    assert [c.attempts for c in calls.done] == [1, 5]


async def test_a_response_over_the_limit_is_not_retried() -> None:
    async with echo_server() as server:
        calls = Calls()
        async with Client(
            f"127.0.0.1:{server.port}",
            settings=client_settings(GRPC_CLIENT_MAX_RECEIVE_MESSAGE_LENGTH=32),
            methods=policy(
                max_attempts=5,
                retryable_status_codes=frozenset({Status.RESOURCE_EXHAUSTED, Status.UNAVAILABLE}),
            ),
            middlewares=[calls],
        ) as client:
            with pytest.raises(RpcError) as err:
                await client.stub(EchoServiceStub).echo(EchoRequest(message="y" * 100))
        assert err.value.status is Status.RESOURCE_EXHAUSTED
        assert calls.done[0].attempts == 1
        assert server.echo.finished == 1
