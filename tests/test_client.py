"""grpcstack.Client against real servers: every cardinality through the full server chain, the
statuses a caller can see, deadlines, metadata, message limits and compression."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from client_helpers import MetadataRecorder, client_settings, echo_server
from conftest import running, settings
from grpclib.const import Status
from prometheus_client import CollectorRegistry

from gen.echo.v1 import EchoRequest, EchoServiceStub
from grpcstack.client import Client, ClientCallInfo, ClientMiddleware, MethodConfig, RpcError
from grpcstack.context import CORRELATION_ID_KEY
from platform_services.echo import EchoServer


async def test_all_four_cardinalities_through_the_full_chain() -> None:
    # every middleware of the default chain on (auth in header mode, so the client sends user-id)
    server_settings = settings(GRPC_ENABLE_AUTH=True)
    async with running(EchoServer(server_settings)) as server:
        async with Client(
            f"127.0.0.1:{server.port}", settings=client_settings(GRPC_CLIENT_USER_ID="u-1")
        ) as client:
            stub = client.stub(EchoServiceStub)
            reply = await stub.echo(EchoRequest(message="hi", payload=b"abc"))
            assert (reply.message, reply.payload_size) == ("hi", 3)

            streamed = [r async for r in stub.expand(EchoRequest(message="x", count=3))]
            assert [(r.message, r.index) for r in streamed] == [("x", 0), ("x", 1), ("x", 2)]

            collected = await stub.collect([EchoRequest(message=m) for m in "abc"])
            assert (collected.message, collected.index) == ("a,b,c", 3)

            async def requests() -> Any:
                for m in "de":
                    yield EchoRequest(message=m)

            chatted = [r async for r in stub.chat(requests())]
            assert [(r.message, r.index) for r in chatted] == [("d", 0), ("e", 1)]
        handled = server.metrics_registry.get_sample_value(
            "grpc_server_handled_total",
            {
                "grpc_service": "echo.v1.EchoService",
                "grpc_method": "Echo",
                "grpc_type": "unary",
                "grpc_code": "OK",
            },
        )
        assert handled == 1


async def test_without_identity_the_auth_middleware_says_unauthenticated() -> None:
    async with running(EchoServer(settings(GRPC_ENABLE_AUTH=True))) as server:
        async with Client(f"127.0.0.1:{server.port}", settings=client_settings()) as client:
            with pytest.raises(RpcError) as err:
                await client.stub(EchoServiceStub).echo(EchoRequest(message="hi"))
            assert err.value.status is Status.UNAUTHENTICATED


@pytest.mark.parametrize(
    "code",
    [Status.INVALID_ARGUMENT, Status.NOT_FOUND, Status.FAILED_PRECONDITION, Status.INTERNAL],
)
async def test_server_statuses_arrive_unchanged_and_are_not_retried(code: Status) -> None:
    async with echo_server() as server:
        async with Client(f"127.0.0.1:{server.port}", settings=client_settings()) as client:
            calls: list[ClientCallInfo] = []

            class Record(ClientMiddleware):
                def on_done(self, call: ClientCallInfo) -> None:
                    calls.append(call)

            client.middlewares.append(Record())
            with pytest.raises(RpcError) as err:
                await client.stub(EchoServiceStub).echo(
                    EchoRequest(fail_with=f"GRPCError:{code.value}")
                )
            assert err.value.status is code
            assert calls[0].attempts == 1 and calls[0].status is code


async def test_application_error_is_internal_with_correlation_id_in_trailers() -> None:
    async with echo_server() as server:
        async with Client(f"127.0.0.1:{server.port}", settings=client_settings()) as client:
            with pytest.raises(RpcError) as err:
                await client.stub(EchoServiceStub).echo(
                    EchoRequest(fail_with="RuntimeError"), metadata={CORRELATION_ID_KEY: "cid-7"}
                )
            assert err.value.status in (Status.INTERNAL, Status.UNKNOWN)
            assert err.value.trailing_metadata is not None
            assert err.value.trailing_metadata.get(CORRELATION_ID_KEY) == "cid-7"


async def test_client_default_deadline_and_per_method_deadline() -> None:
    async with echo_server() as server:
        target = f"127.0.0.1:{server.port}"
        async with Client(target, settings=client_settings(GRPC_CLIENT_TIMEOUT_SECONDS=0.2)) as c:
            with pytest.raises(RpcError) as err:
                await c.stub(EchoServiceStub).echo(EchoRequest(sleep_seconds=30))
            assert err.value.status is Status.DEADLINE_EXCEEDED
        methods = {"/echo.v1.EchoService/Echo": MethodConfig(timeout=0.2)}
        async with Client(target, settings=client_settings(), methods=methods) as c:
            with pytest.raises(RpcError) as err:
                await c.stub(EchoServiceStub).echo(EchoRequest(sleep_seconds=30))
            assert err.value.status is Status.DEADLINE_EXCEEDED
            # other methods of the service keep no deadline: a streaming call completes
            got = [r async for r in c.stub(EchoServiceStub).expand(EchoRequest(count=2))]
            assert len(got) == 2


async def test_deadline_on_a_stream_after_messages_arrived() -> None:
    async with echo_server() as server:
        async with Client(f"127.0.0.1:{server.port}", settings=client_settings()) as client:
            stub = client.stub(EchoServiceStub)
            got = []
            with pytest.raises(RpcError) as err:
                # three messages, then the handler sleeps past the deadline
                async for r in stub.expand(EchoRequest(count=3, sleep_seconds=30), timeout=0.5):
                    got.append(r)
            assert err.value.status is Status.DEADLINE_EXCEEDED
            assert len(got) == 3


async def test_max_receive_message_length_enforced_on_the_prefix() -> None:
    async with echo_server() as server:
        s = client_settings(GRPC_CLIENT_MAX_RECEIVE_MESSAGE_LENGTH=64)
        async with Client(f"127.0.0.1:{server.port}", settings=s) as client:
            stub = client.stub(EchoServiceStub)
            assert (await stub.echo(EchoRequest(message="small"))).message == "small"
            with pytest.raises(RpcError) as err:
                await stub.echo(EchoRequest(message="x" * 200))
            assert err.value.status is Status.RESOURCE_EXHAUSTED
            assert "larger than max (20" in (err.value.message or "")
            # the connection stays usable
            assert (await stub.echo(EchoRequest(message="again"))).message == "again"


async def test_max_send_message_length_refused_before_sending() -> None:
    async with echo_server() as server:
        s = client_settings(GRPC_CLIENT_MAX_SEND_MESSAGE_LENGTH=100)
        async with Client(f"127.0.0.1:{server.port}", settings=s) as client:
            with pytest.raises(RpcError) as err:
                await client.stub(EchoServiceStub).echo(EchoRequest(payload=b"x" * 200))
            assert err.value.status is Status.RESOURCE_EXHAUSTED
        assert server.echo.finished == 0


async def test_gzip_request_compression() -> None:
    async with echo_server() as server:
        s = client_settings(GRPC_CLIENT_COMPRESSION="gzip")
        async with Client(f"127.0.0.1:{server.port}", settings=s) as client:
            stub = client.stub(EchoServiceStub)
            reply = await stub.echo(EchoRequest(message="z", payload=b"a" * 10_000))
            assert reply.payload_size == 10_000
            got = await stub.collect([EchoRequest(payload=b"b" * 5000) for _ in range(3)])
            assert got.payload_size == 15_000


async def test_server_gzip_responses_are_decompressed() -> None:
    async with running(EchoServer(settings(GRPC_COMPRESSION="gzip"))) as server:
        async with Client(f"127.0.0.1:{server.port}", settings=client_settings()) as client:
            stub = client.stub(EchoServiceStub)
            reply = await stub.echo(EchoRequest(message="m" * 5000))
            assert reply.message == "m" * 5000


async def test_bearer_token_and_static_metadata_are_sent() -> None:
    from grpcstack.middleware import make_token

    secret = "s3cret-for-tests-only"
    server_settings = settings(
        GRPC_ENABLE_AUTH=True, GRPC_AUTH_MODE="hmac", GRPC_AUTH_HMAC_SECRET=secret
    )
    async with running(EchoServer(server_settings)) as server:
        token = make_token(secret, "svc-a", ttl=60)
        s = client_settings(GRPC_CLIENT_BEARER_TOKEN=token)
        async with Client(f"127.0.0.1:{server.port}", settings=s) as client:
            assert (await client.stub(EchoServiceStub).echo(EchoRequest(message="ok"))).message
        async with Client(
            f"127.0.0.1:{server.port}", settings=client_settings(GRPC_CLIENT_BEARER_TOKEN="bad")
        ) as client:
            with pytest.raises(RpcError) as err:
                await client.stub(EchoServiceStub).echo(EchoRequest(message="no"))
            assert err.value.status is Status.UNAUTHENTICATED


async def test_client_metrics_use_go_grpc_middleware_names() -> None:
    registry = CollectorRegistry()
    async with echo_server() as server:
        async with Client(
            f"127.0.0.1:{server.port}", settings=client_settings(), metrics_registry=registry
        ) as client:
            stub = client.stub(EchoServiceStub)
            await stub.echo(EchoRequest(message="a"))
            with pytest.raises(RpcError):
                await stub.echo(EchoRequest(fail_with="GRPCError:5"))
            [_ async for _ in stub.expand(EchoRequest(count=4))]
    labels = {"grpc_service": "echo.v1.EchoService", "grpc_method": "Echo", "grpc_type": "unary"}
    sample = registry.get_sample_value
    assert sample("grpc_client_started_total", labels) == 2
    assert sample("grpc_client_handled_total", {**labels, "grpc_code": "OK"}) == 1
    assert sample("grpc_client_handled_total", {**labels, "grpc_code": "NotFound"}) == 1
    assert sample("grpc_client_handling_seconds_count", labels) == 2
    assert sample("grpc_client_msg_sent_total", labels) == 2
    expand = {**labels, "grpc_method": "Expand", "grpc_type": "server_stream"}
    assert sample("grpc_client_msg_received_total", expand) == 4


async def test_middleware_on_start_adds_metadata_or_rejects_without_sending() -> None:
    class Inject(ClientMiddleware):
        def on_start(self, call: ClientCallInfo) -> None:
            call.metadata.append(("x-tenant", "t-9"))

    class Reject(ClientMiddleware):
        def on_start(self, call: ClientCallInfo) -> None:
            if call.method_name == "Expand":
                raise RpcError(Status.PERMISSION_DENIED, "not from this client")

    async with running(MetadataRecorder(settings())) as server:
        async with Client(
            f"127.0.0.1:{server.port}", settings=client_settings(), middlewares=[Inject(), Reject()]
        ) as client:
            await client.stub(EchoServiceStub).echo(EchoRequest(message="a"))
            with pytest.raises(RpcError) as err:
                [_ async for _ in client.stub(EchoServiceStub).expand(EchoRequest(count=1))]
            assert err.value.status is Status.PERMISSION_DENIED
    assert len(server.seen) == 1
    assert server.seen[0][0]["x-tenant"] == "t-9"


async def test_cancelled_call_resets_the_stream_and_reports_cancelled() -> None:
    done: list[ClientCallInfo] = []

    class Record(ClientMiddleware):
        def on_done(self, call: ClientCallInfo) -> None:
            done.append(call)

    async with echo_server() as server:
        async with Client(
            f"127.0.0.1:{server.port}", settings=client_settings(), middlewares=[Record()]
        ) as client:
            task = asyncio.ensure_future(
                client.stub(EchoServiceStub).echo(EchoRequest(sleep_seconds=30))
            )
            await asyncio.wait_for(server.echo.started.wait(), 10)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert done[0].status is Status.CANCELLED
            # the connection is still fine
            assert (await client.stub(EchoServiceStub).echo(EchoRequest(message="b"))).message


async def test_readme_client_example_runs_as_written() -> None:
    import re
    import types

    from conftest import ROOT

    section = (ROOT / "README.md").read_text().split("## Client\n", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code
    module = types.ModuleType("readme_client")
    exec(compile(code.group(1), "README.md#client", "exec"), module.__dict__)
    async with running(EchoServer(settings(GRPC_ENABLE_AUTH=True))) as server:
        assert await module.main(f"127.0.0.1:{server.port}") == "hi"


async def test_clean_close_waits_for_running_calls_and_refuses_new_ones() -> None:
    async with echo_server() as server:
        client = Client(f"127.0.0.1:{server.port}", settings=client_settings())
        stub = client.stub(EchoServiceStub)
        running_call = asyncio.ensure_future(stub.echo(EchoRequest(message="s", sleep_seconds=0.3)))
        await asyncio.wait_for(server.echo.started.wait(), 10)
        await client.aclose(grace=30)
        assert running_call.done() and (await running_call).message == "s"
        with pytest.raises(RpcError) as err:
            await stub.echo(EchoRequest(message="late"))
        assert err.value.status is Status.UNAVAILABLE
        assert client.inflight == 0
