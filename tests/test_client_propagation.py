"""Deadline, correlation-id and (opt-in) identity propagation across two real services: a front
service whose handler calls an inner service through grpcstack.Client."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from client_helpers import MetadataRecorder, client_settings
from conftest import running, settings
from grpclib.const import Status

from gen.echo.v1 import EchoRequest, EchoResponse, EchoServiceBase, EchoServiceStub
from grpcstack import AsyncBaseServer
from grpcstack.client import Client, RpcError
from grpcstack.context import CORRELATION_ID_KEY, current_correlation_id


class Front(EchoServiceBase):
    """Forwards Echo to the inner service and remembers its own correlation id."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.correlation_ids: list[str | None] = []
        #: the inner call's own metadata
        self.metadata: dict[str, str] | None = None

    async def echo(self, message: EchoRequest) -> EchoResponse:
        self.correlation_ids.append(current_correlation_id())
        return await self.client.stub(EchoServiceStub).echo(message, metadata=self.metadata)


class FrontServer(AsyncBaseServer):
    def __init__(self, inner_port: int, **client_overrides: Any) -> None:
        super().__init__(settings(GRPC_ENABLE_RATE_LIMITING=False))
        self.client = Client(
            f"127.0.0.1:{inner_port}", settings=client_settings(**client_overrides)
        )
        self.front = Front(self.client)

    def services(self) -> list[Any]:
        return [self.front]

    async def after_stop(self) -> None:
        self.client.close()


async def test_inner_call_sees_the_outer_remaining_time_and_correlation_id() -> None:
    inner = MetadataRecorder(settings(GRPC_ENABLE_RATE_LIMITING=False))
    async with running(inner):
        # the front's client has a much longer default deadline of its own
        front = FrontServer(inner.port or 0, GRPC_CLIENT_TIMEOUT_SECONDS=600)
        async with (
            running(front),
            Client(f"127.0.0.1:{front.port}", settings=client_settings()) as outer,
        ):
            reply = await outer.stub(EchoServiceStub).echo(
                EchoRequest(message="chained"), timeout=5, metadata={CORRELATION_ID_KEY: "cid-1"}
            )
            assert reply.message == "chained"
            # no correlation id from the outer caller: the front's generated one travels on
            await outer.stub(EchoServiceStub).echo(EchoRequest(message="again"), timeout=5)
    (_, remaining1, cid1), (_, remaining2, cid2) = inner.seen
    assert remaining1 is not None and 0 < remaining1 <= 5
    assert remaining2 is not None and 0 < remaining2 <= 5
    assert cid1 == "cid-1"
    assert front.front.correlation_ids[1] is not None
    assert cid2 == front.front.correlation_ids[1]


async def test_a_chain_never_works_past_the_first_callers_deadline() -> None:
    inner = MetadataRecorder(settings(GRPC_ENABLE_RATE_LIMITING=False))
    async with running(inner):
        front = FrontServer(inner.port or 0)
        async with (
            running(front),
            Client(f"127.0.0.1:{front.port}", settings=client_settings()) as outer,
        ):
            with pytest.raises(RpcError) as err:
                await outer.stub(EchoServiceStub).echo(EchoRequest(sleep_seconds=60), timeout=0.5)
            assert err.value.status is Status.DEADLINE_EXCEEDED
            # the inner handler was stopped by the propagated deadline, not left running 60 s
            labels = {
                "grpc_service": "echo.v1.EchoService",
                "grpc_method": "Echo",
                "grpc_type": "unary",
            }

            def inner_ended() -> bool:
                registry = inner.metrics_registry
                return any(
                    (
                        registry.get_sample_value(
                            "grpc_server_handled_total", {**labels, "grpc_code": c}
                        )
                        or 0
                    )
                    > 0
                    for c in ("DeadlineExceeded", "Canceled")
                )

            for _ in range(1000):  # bounded wait for the inner server's books
                if inner_ended():
                    break
                await asyncio.sleep(0.01)
            assert inner_ended()
    assert inner.seen[0][1] is not None and inner.seen[0][1] <= 0.5


async def test_propagation_can_be_switched_off() -> None:
    inner = MetadataRecorder(settings(GRPC_ENABLE_RATE_LIMITING=False))
    async with running(inner):
        front = FrontServer(
            inner.port or 0,
            GRPC_CLIENT_PROPAGATE_DEADLINE=False,
            GRPC_CLIENT_PROPAGATE_CORRELATION_ID=False,
        )
        async with (
            running(front),
            Client(f"127.0.0.1:{front.port}", settings=client_settings()) as outer,
        ):
            await outer.stub(EchoServiceStub).echo(
                EchoRequest(message="x"), timeout=5, metadata={CORRELATION_ID_KEY: "cid-2"}
            )
    _, remaining, cid = inner.seen[0]
    assert remaining is None
    assert cid != "cid-2"


def _identity(metadata: dict[str, Any]) -> tuple[Any, Any]:
    return metadata.get("user-id"), metadata.get("authorization")


async def test_identity_is_forwarded_when_the_client_says_so() -> None:
    """GRPC_CLIENT_FORWARD_IDENTITY: the inner service sees the outer caller's user-id and
    authorization (the front's own identity never mixed in); a caller without either leaves the
    front's identity; metadata the front gives its call wins; outside a handler the client's own
    identity goes."""
    inner = MetadataRecorder(settings(GRPC_ENABLE_RATE_LIMITING=False))
    async with running(inner):
        front = FrontServer(
            inner.port or 0,
            GRPC_CLIENT_FORWARD_IDENTITY=True,
            GRPC_CLIENT_USER_ID="front-svc",
            GRPC_CLIENT_BEARER_TOKEN="front-token",
        )
        async with (
            running(front),
            Client(f"127.0.0.1:{front.port}", settings=client_settings()) as outer,
        ):
            stub = outer.stub(EchoServiceStub)
            caller = {"user-id": "alice", "authorization": "Bearer alice-token"}
            await stub.echo(EchoRequest(message="a"), timeout=5, metadata=caller)
            await stub.echo(EchoRequest(message="b"), timeout=5, metadata={"user-id": "bob"})
            await stub.echo(EchoRequest(message="c"), timeout=5)
            front.front.metadata = {"user-id": "chosen"}
            await stub.echo(EchoRequest(message="d"), timeout=5, metadata=caller)
            # the front's client used outside any handler: its own identity
            await front.client.stub(EchoServiceStub).echo(EchoRequest(message="e"))
    assert [_identity(m) for m, _, _ in inner.seen] == [
        ("alice", "Bearer alice-token"),
        ("bob", None),
        ("front-svc", "Bearer front-token"),
        ("chosen", "Bearer alice-token"),
        ("front-svc", "Bearer front-token"),
    ]


async def test_identity_is_not_forwarded_by_default() -> None:
    inner = MetadataRecorder(settings(GRPC_ENABLE_RATE_LIMITING=False))
    async with running(inner):
        front = FrontServer(inner.port or 0, GRPC_CLIENT_USER_ID="front-svc")
        async with (
            running(front),
            Client(f"127.0.0.1:{front.port}", settings=client_settings()) as outer,
        ):
            caller = {"user-id": "alice", "authorization": "Bearer alice-token"}
            await outer.stub(EchoServiceStub).echo(
                EchoRequest(message="a"), timeout=5, metadata=caller
            )
    assert [_identity(m) for m, _, _ in inner.seen] == [("front-svc", None)]
