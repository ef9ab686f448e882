"""grpc.health.v1 Health service: Check and Watch, overall plus one status per served service.

A service's status is what the server set (SERVING after start, NOT_SERVING on stop) combined
with its readiness checks: any check that fails, raises or times out makes it NOT_SERVING.

Policy for the overall status (""), which Kubernetes probes and load balancers ask for: it follows
the server's own state and the checks shared by every service (``service=None``: MongoDB and
other shared resources), NOT the checks of one service. A replica whose OCR engine is missing
still serves its other services, so it must not be taken out of rotation; clients of OCR ask for
"ocr.v1.OCRService" and see NOT_SERVING there. Watch re-evaluates on every status change and every
``interval`` seconds while checks exist, and sends only changes; at shutdown it sends the final
NOT_SERVING and ends with UNAVAILABLE so that it does not hold up the drain.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_grpc import HealthBase
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from grpclib.server import Stream

log = logging.getLogger("grpcstack.health")

ServingStatus = HealthCheckResponse.ServingStatus
SERVING = HealthCheckResponse.SERVING
NOT_SERVING = HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = HealthCheckResponse.SERVICE_UNKNOWN
OVERALL = ""

ReadinessCheck = Callable[[], Awaitable[bool]]


@dataclass(frozen=True)
class _Check:
    name: str
    func: ReadinessCheck
    service: str | None  # None: every service


class HealthService(HealthBase):
    def __init__(self, *, check_timeout: float = 2.0, interval: float = 5.0) -> None:
        self._status: dict[str, int] = {OVERALL: NOT_SERVING}
        self._checks: list[_Check] = []
        self._check_timeout = check_timeout
        self._interval = interval
        self._changed = asyncio.Event()
        self._shutdown = False

    # --- server side API ---------------------------------------------------------------

    def register(self, service: str) -> None:
        self._status.setdefault(service, NOT_SERVING)

    def set_all(self, status: int) -> None:
        for name in self._status:
            self._status[name] = status
        self._notify()

    def set_status(self, service: str, status: int) -> None:
        self._status[service] = status
        self._notify()

    def add_check(
        self, func: ReadinessCheck, *, service: str | None = None, name: str | None = None
    ) -> None:
        """Attach an async readiness check: to one service, or to all when ``service`` is None."""
        self._checks.append(_Check(name or getattr(func, "__name__", "check"), func, service))
        self._notify()

    def shutdown(self) -> None:
        """Flip everything to NOT_SERVING and end the Watch streams."""
        self._shutdown = True
        self.set_all(NOT_SERVING)

    def _notify(self) -> None:
        # broadcast: wake every watcher, then start a new generation
        self._changed.set()
        self._changed = asyncio.Event()

    async def evaluate(self, service: str) -> int | None:
        """The effective status, or None for a service this server does not know."""
        base = self._status.get(service)
        if base is None:
            return None
        if base != SERVING:
            return base
        # overall: shared checks only (see the module docstring)
        checks = [c for c in self._checks if c.service is None or c.service == service]
        if not checks:
            return SERVING
        results = await asyncio.gather(*(self._run(c) for c in checks))
        return SERVING if all(results) else NOT_SERVING

    async def _run(self, check: _Check) -> bool:
        try:
            async with asyncio.timeout(self._check_timeout):
                return bool(await check.func())
        except TimeoutError:
            log.warning("readiness check %s timed out after %ss", check.name, self._check_timeout)
        except Exception as exc:
            log.warning("readiness check %s failed: %r", check.name, exc)
        return False

    # --- RPCs ----------------------------------------------------------------------------

    async def Check(self, stream: Stream[HealthCheckRequest, HealthCheckResponse]) -> None:
        request = await stream.recv_message()
        assert request is not None
        status = await self.evaluate(request.service)
        if status is None:
            raise GRPCError(Status.NOT_FOUND, f"unknown service {request.service!r}")
        await stream.send_message(HealthCheckResponse(status=status))  # type: ignore[arg-type]

    async def Watch(self, stream: Stream[HealthCheckRequest, HealthCheckResponse]) -> None:
        request = await stream.recv_message()
        assert request is not None
        last: int | None = -1
        while True:
            changed = self._changed
            status = await self.evaluate(request.service)
            shown = SERVICE_UNKNOWN if status is None else status
            if shown != last:
                await stream.send_message(HealthCheckResponse(status=shown))  # type: ignore[arg-type]
                last = shown
            if self._shutdown:
                raise GRPCError(Status.UNAVAILABLE, "Server is shutting down")
            # checks can recover or fail without any event: poll them while they exist
            try:
                async with asyncio.timeout(self._interval if self._checks else None):
                    await changed.wait()
            except TimeoutError:
                pass
