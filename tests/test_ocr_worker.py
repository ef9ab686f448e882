"""Seed 001's OCR worker stage in dual mode against a real server (the canned 50-box OCR server
with its HTTP listener): both transports give the same OcrResult, the rollout percentage splits
jobs stably, and a gRPC failure with a retryable status falls back to HTTP (counted)."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import running, settings
from grpclib.const import Status as GrpcStatus
from grpclib.exceptions import GRPCError
from prometheus_client import CollectorRegistry

from gen.ocr.v1 import OcrResponse
from grpcstack.middleware import Middleware
from grpcstack.testing import bound_socket
from platform_services.bench_fixtures import CANNED, CannedOcrServer
from platform_services.ocr.worker import OcrFailed, OcrResult, OcrStage, WorkerSettings

# what a client receives: the canned response after a trip through the wire (float32 fields)
EXPECTED = OcrResult.from_response(OcrResponse.parse(bytes(CANNED)))


def stage(server: Any, registry: CollectorRegistry | None = None, **overrides: Any) -> OcrStage:
    values: dict[str, Any] = {
        "OCR_TRANSPORT": "grpc",
        "OCR_GRPC_HOST": "127.0.0.1",
        "OCR_GRPC_PORT": server.port,
        "OCR_HTTP_URL": f"http://127.0.0.1:{server.http_port}",
        "OCR_REQUEST_TIMEOUT_SECONDS": 30,
    }
    values.update(overrides)
    return OcrStage(WorkerSettings(_env_file=None, **values), registry)  # type: ignore[call-arg]


def count(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def served(server: Any, protocol: str | None, code: str = "OK") -> float:
    """ExtractText calls the server itself counted over ``protocol`` (grpc or connect; None
    for a server without the HTTP listener, whose metrics carry no protocol label)."""
    labels = {
        "grpc_service": "ocr.v1.OCRService",
        "grpc_method": "ExtractText",
        "grpc_type": "unary",
        "grpc_code": code,
    }
    if protocol is not None:
        labels["protocol"] = protocol
    return count(server.metrics_registry, "grpc_server_handled_total", **labels)


async def test_http_and_grpc_give_the_same_result() -> None:
    async with running(CannedOcrServer(settings(GRPC_HTTP_PORT=0, GRPC_ENABLE_AUTH=True))) as srv:
        expected = EXPECTED
        assert len(expected.boxes) == 50
        results = {}
        for transport in ("http", "grpc"):
            registry = CollectorRegistry()
            worker = stage(srv, registry, OCR_TRANSPORT=transport, OCR_GRPC_ROLLOUT_PERCENT=100)
            try:
                results[transport] = await worker.run("job-1", private_path="scan.png")
            finally:
                await worker.close()
            assert count(registry, "ocr_worker_calls_total", transport=transport, outcome="OK") == 1
        assert results["http"] == results["grpc"] == expected
        assert served(srv, "connect") == served(srv, "grpc") == 1


async def test_rollout_percent_splits_jobs_stably() -> None:
    async with running(CannedOcrServer(settings(GRPC_HTTP_PORT=0))) as srv:
        jobs = [f"job-{i}" for i in range(400)]
        for percent, low, high in [(0, 0, 0), (100, 400, 400), (30, 80, 160)]:
            worker = stage(srv, OCR_GRPC_ROLLOUT_PERCENT=percent)
            chosen = [worker.transport_for(j) for j in jobs]
            assert low <= chosen.count("grpc") <= high, percent
            assert chosen == [worker.transport_for(j) for j in jobs]  # a job keeps its transport
            await worker.close()
        assert stage(srv, OCR_TRANSPORT="http").transport_for("job-1") == "http"
        # the calls go where the choice says: counted per transport
        registry = CollectorRegistry()
        worker = stage(srv, registry, OCR_GRPC_ROLLOUT_PERCENT=30)
        try:
            for job in jobs[:40]:
                await worker.run(job, private_path="scan.png")
        finally:
            await worker.close()
        grpc = count(registry, "ocr_worker_calls_total", transport="grpc", outcome="OK")
        http = count(registry, "ocr_worker_calls_total", transport="http", outcome="OK")
        assert grpc + http == 40
        assert grpc == [worker.transport_for(j) for j in jobs[:40]].count("grpc")
        assert (served(srv, "grpc"), served(srv, "connect")) == (grpc, http)


async def test_unreachable_grpc_falls_back_to_http() -> None:
    closed = bound_socket()  # bound, never listening: connections are refused
    try:
        async with running(CannedOcrServer(settings(GRPC_HTTP_PORT=0))) as srv:
            registry = CollectorRegistry()
            worker = stage(srv, registry, OCR_GRPC_PORT=closed.getsockname()[1])
            try:
                result = await worker.run("job-1", private_path="scan.png")
            finally:
                await worker.close()
            assert result == EXPECTED
            assert count(registry, "ocr_worker_fallbacks_total", code="UNAVAILABLE") == 1
            assert count(registry, "ocr_worker_calls_total", transport="http", outcome="OK") == 1
            assert served(srv, "connect") == 1  # the fallback reached the server over HTTP
    finally:
        closed.close()


class Unavailable(Middleware):
    """A dependency of the gRPC side is down: every call is UNAVAILABLE."""

    def on_request(self, event: Any, call: Any) -> None:
        raise GRPCError(GrpcStatus.UNAVAILABLE, "dependency down, retry later")


class UnavailableServer(CannedOcrServer):
    def middlewares(self) -> list[Middleware]:
        return [*super().middlewares(), Unavailable()]


async def test_unavailable_grpc_falls_back_and_other_errors_do_not() -> None:
    async with running(CannedOcrServer(settings(GRPC_HTTP_PORT=0, GRPC_ENABLE_AUTH=True))) as srv:
        down = UnavailableServer(settings())
        async with running(down):
            registry = CollectorRegistry()
            # gRPC to a server answering UNAVAILABLE, HTTP to a healthy one
            worker = stage(srv, registry, OCR_GRPC_PORT=down.port)
            try:
                assert await worker.run("job-1", private_path="a.png") == EXPECTED
            finally:
                await worker.close()
            assert count(registry, "ocr_worker_fallbacks_total", code="UNAVAILABLE") == 1
            assert (
                count(registry, "ocr_worker_calls_total", transport="grpc", outcome="UNAVAILABLE")
                == 1
            )
            assert served(down, None, "Unavailable") == 1  # refused there ...
            assert served(srv, "connect") == 1  # ... served here over HTTP
        # UNAUTHENTICATED is not retryable: no fallback, the code is reported
        registry = CollectorRegistry()
        worker = stage(srv, registry, OCR_USER_ID="")
        try:
            with pytest.raises(OcrFailed) as err:
                await worker.run("job-1", private_path="scan.png")
            assert (err.value.transport, err.value.code) == ("grpc", GrpcStatus.UNAUTHENTICATED)
            with pytest.raises(OcrFailed) as err:
                await stage(srv, OCR_USER_ID="", OCR_TRANSPORT="http").run("j", private_path="x")
            assert (err.value.transport, err.value.code) == ("http", GrpcStatus.UNAUTHENTICATED)
        finally:
            await worker.close()
        assert count(registry, "ocr_worker_fallbacks_total", code="UNAVAILABLE") == 0
