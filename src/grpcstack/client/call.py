"""ClientCall: one call as betterproto2 stubs drive it (grpclib's client Stream API), with gRFC
A6 retries underneath.

Request messages are buffered (up to the retry buffer limit) until the call commits, which it
does when response headers arrive (with the first response message): until then a failed attempt
is replayed on a new stream, possibly to another target. Attempts the server never saw (refused
streams, no connection) are retried transparently: the first such retry is free, later ones count
as attempts.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from grpclib.const import Status
from grpclib.exceptions import GRPCError, ProtocolError
from grpclib.metadata import encode_timeout

from ..compression import gzip_compress
from .attempt import Attempt, AttemptError, frame
from .channel import ConnectFailed, Endpoint
from .middleware import ClientCallInfo
from .retry import NO_RETRY, pushback

if TYPE_CHECKING:
    from grpclib.metadata import _Metadata

    from .spec import ClientLike, MethodSpec

#: transparent retries of one call that do not count as attempts (A6 allows one)
FREE_TRANSPARENT_RETRIES = 1


class RpcError(GRPCError):
    """GRPCError with the call's metadata (trailers carry pushback and correlation ids)."""

    def __init__(
        self,
        status: Status,
        message: str | None = None,
        details: Any = None,
        *,
        initial_metadata: _Metadata | None = None,
        trailing_metadata: _Metadata | None = None,
    ) -> None:
        super().__init__(status, message, details)
        self.initial_metadata = initial_metadata
        self.trailing_metadata = trailing_metadata


class ClientCall:
    """A call in progress; ``async with`` it, then send/receive as with a grpclib Stream."""

    __slots__ = (
        "_attempt",
        "_begun",
        "_buffer",
        "_buffered",
        "_client",
        "_committed",
        "_done",
        "_ended",
        "_endpoint",
        "_expired",
        "_metadata_headers",
        "_request_started",
        "_retries",
        "_sent_messages",
        "_spec",
        "_timer",
        "info",
        "initial_metadata",
        "trailing_metadata",
    )

    def __init__(
        self,
        client: ClientLike,
        spec: MethodSpec,
        info: ClientCallInfo,
        metadata_headers: list[tuple[str, str]],
    ) -> None:
        self._client = client
        self._spec = spec
        self.info = info
        self._metadata_headers = metadata_headers
        self._attempt: Attempt | None = None
        self._begun = False
        self._endpoint: Endpoint | None = None
        self._buffer: list[bytes] | None = []
        self._buffered = 0
        self._committed = False
        self._ended = False
        self._done = False
        self._expired = False
        self._request_started = False
        self._retries = 0
        self._sent_messages = 0
        self._timer: asyncio.TimerHandle | None = None
        self.initial_metadata: _Metadata | None = None
        self.trailing_metadata: _Metadata | None = None

    # --- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> ClientCall:
        self._begin()
        return self

    def _begin(self) -> None:
        client = self._client
        if client.closing:
            exc = RpcError(Status.UNAVAILABLE, "Client is closed")
            self._done = True
            raise exc
        self._begun = True
        client.inflight += 1
        info = self.info
        hooks = self._spec.hooks
        for hook in hooks.on_start:
            try:
                hook(info)
            except BaseException as exc:
                self._finish(exc)
                raise
        if info.deadline is not None:
            loop = asyncio.get_running_loop()
            if info.deadline <= loop.time():
                exc = RpcError(
                    Status.DEADLINE_EXCEEDED, "Deadline exceeded before the call started"
                )
                self._finish(exc)
                raise exc
            self._timer = loop.call_at(info.deadline, self._on_deadline)

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if self._done:
            return
        if exc is None:
            try:
                # drain to the trailers so the status is known (grpclib's Stream does the same)
                if not self._ended and self._request_started:
                    await self.end()
                while await self.recv_message() is not None:
                    pass
            except BaseException as err:
                self._finish(err)
                raise
            self._finish(None)
        else:
            self._finish(exc)

    def _on_deadline(self) -> None:
        self._expired = True
        if self._attempt is not None:
            self._attempt.cancel(TimeoutError("Deadline exceeded"))

    def _finish(self, exc: BaseException | None) -> None:
        if self._done:
            return
        self._done = True
        if self._begun:
            self._client.call_ended()
        if self._timer is not None:
            self._timer.cancel()
        if self._attempt is not None:
            self._attempt.close()
        info = self.info
        if exc is None:
            info.status = Status.OK
        elif isinstance(exc, GRPCError):
            info.status, info.status_message = exc.status, exc.message
        elif isinstance(exc, asyncio.CancelledError):
            info.status, info.status_message = Status.CANCELLED, "Cancelled"
        else:
            info.status, info.status_message = Status.UNKNOWN, repr(exc)
        info.duration = time.perf_counter() - info.start
        for hook in self._spec.hooks.on_done:
            hook(info)

    # --- attempts -------------------------------------------------------------------------

    def _headers(self) -> list[tuple[bytes, bytes]]:
        """The call's own request headers (after the method's fixed ones)."""
        headers: list[tuple[bytes, bytes]] = []
        if self.info.deadline is not None:
            remaining = self.info.deadline - asyncio.get_running_loop().time()
            timeout = encode_timeout(max(remaining, 0.0)).encode("ascii")
            headers.append((b"grpc-timeout", timeout))
        for key, value in self._metadata_headers:
            headers.append((key.encode("ascii"), value.encode("ascii")))
        return headers

    async def _start_attempt(self) -> Attempt:
        """Open a stream on a target and replay what was sent so far."""
        client = self._client
        spec = self._spec
        attempt = Attempt(client.codec, client.details_codec, spec.reply_type, spec.max_receive)
        self._attempt = attempt
        endpoint = client.pool.pick(self._endpoint)
        self._endpoint = endpoint
        self.info.peer = endpoint.target
        self.info.attempts += 1
        protocol = endpoint.ready()
        if protocol is None:
            try:
                protocol = await endpoint.connect(self.info.time_remaining())
            except ConnectFailed as exc:
                raise AttemptError(exc.status, exc.message, sent=False) from None
        buffer = self._buffer
        if buffer is None:  # committed before: nothing to replay (callers never get here)
            raise AttemptError(Status.UNAVAILABLE, "call committed")
        first = buffer[0] if buffer else None
        end_now = self._ended and len(buffer) <= 1
        try:
            prefix = self._spec.headers_for(endpoint)
            await attempt.open(protocol, prefix, self._headers(), first, end_now)
            for data in buffer[1:-1]:
                await attempt.send(data, False)
            if len(buffer) > 1:
                await attempt.send(buffer[-1], self._ended)
            elif self._ended and not buffer:
                await attempt.end()
        except BaseException as exc:
            raise self._classify(exc) from None
        return attempt

    def _classify(self, exc: BaseException) -> BaseException:
        attempt = self._attempt
        if self._expired:
            return RpcError(Status.DEADLINE_EXCEEDED, "Deadline exceeded")
        if isinstance(exc, asyncio.CancelledError | AttemptError):
            return exc
        if attempt is None:
            return exc
        try:
            return attempt.error_from(exc)
        except BaseException as other:
            return other

    async def _retry(self, err: AttemptError) -> bool:
        """Whether to try again after ``err`` (after the backoff, when it says so)."""
        client = self._client
        info = self.info
        attempt = self._attempt
        if attempt is not None:
            if attempt.committed:
                self._commit()  # e.g. a message over the limit after the headers: no retry
            attempt.close()
            self._attempt = None
        if self._committed or self._buffer is None or self._expired:
            return False
        transparent = err.refused or not err.sent
        policy = self._spec.retry or NO_RETRY
        waiting = not err.sent and self._spec.wait_for_ready
        if transparent and (waiting or info.transparent_retries < FREE_TRANSPARENT_RETRIES):
            info.transparent_retries += 1
            delay = 0.0
            if not err.sent and client.pool.earliest_retry() > time.monotonic():
                # every target is backing off: wait for the first one (within the deadline)
                delay = max(0.0, client.pool.earliest_retry() - time.monotonic())
        else:
            throttle = client.throttle
            retryable = err.status in policy.retryable_status_codes
            if retryable and throttle is not None:
                throttle.on_failure()
            if not retryable:
                return False
            pushed = pushback(err.status, err.raw, err.details)
            if pushed is not None:
                info.extra["pushback"] = pushed
            if pushed is not None and pushed < 0:
                return False
            if self._retries + 1 >= policy.max_attempts:
                return False
            if throttle is not None and not throttle.allows_retry:
                return False
            self._retries += 1
            delay = pushed if pushed is not None else policy.backoff(self._retries)
        if info.deadline is not None:
            if asyncio.get_running_loop().time() + delay >= info.deadline:
                return False
        if delay > 0:
            await asyncio.sleep(delay)
        for hook in self._spec.hooks.on_attempt:
            hook(info, info.attempts + 1, transparent)
        return True

    def _commit(self) -> None:
        self._committed = True
        self._buffer = None

    def _fail(self, err: AttemptError | BaseException) -> BaseException:
        if not isinstance(err, AttemptError):
            return err
        if err.status is Status.OK:  # pragma: no cover - never raised for OK
            return RpcError(Status.UNKNOWN, "OK as an error")
        attempt = self._attempt
        return RpcError(
            err.status,
            err.message,
            err.details,
            initial_metadata=attempt.initial_metadata if attempt else self.initial_metadata,
            trailing_metadata=err.trailers,
        )

    # --- the grpclib Stream API -----------------------------------------------------------

    async def send_request(self, *, end: bool = False) -> None:
        if self._request_started:
            raise ProtocolError("Request is already sent")
        self._request_started = True
        if end:
            self._ended = True
        while True:
            try:
                await self._start_attempt()
                return
            except BaseException as exc:
                err = self._classify(exc)
                if isinstance(err, AttemptError) and await self._retry(err):
                    continue
                raise self._fail(err) from None

    async def send_message(self, message: Any, *, end: bool = False) -> None:
        spec = self._spec
        if self._ended:
            raise ProtocolError("Stream is ended")
        if not spec.cardinality.client_streaming:
            if self._sent_messages:
                raise ProtocolError("Message was already sent")
            end = True
        data = self._client.codec.encode(message, spec.request_type)
        if len(data) > self._client.max_send:
            raise RpcError(
                Status.RESOURCE_EXHAUSTED,
                f"Sent message larger than max ({len(data)} vs. {self._client.max_send})",
            )
        data = frame(gzip_compress(data), True) if spec.compress else frame(data)
        self._sent_messages += 1
        self.info.msg_sent += 1
        for hook in spec.hooks.on_message_sent:
            hook(self.info)
        if self._buffer is not None:
            self._buffered += len(data)
            if self._buffered > self._client.retry_buffer:
                self._commit()  # too large to replay: no more retries
            else:
                self._buffer.append(data)
        if end:
            self._ended = True
        if not self._request_started:
            self._request_started = True
            while True:
                try:
                    await self._start_attempt()
                    if self._buffer is None:  # committed for size: still send this one
                        assert self._attempt is not None
                        await self._attempt.send(data, end)
                    return
                except BaseException as exc:
                    err = self._classify(exc)
                    if isinstance(err, AttemptError) and await self._retry(err):
                        continue
                    raise self._fail(err) from None
        attempt = self._attempt
        if attempt is None:
            return  # between attempts: the next one replays the buffer
        try:
            await attempt.send(data, end)
        except BaseException as exc:
            err = self._classify(exc)
            if not isinstance(err, AttemptError) or self._committed or self._buffer is None:
                raise self._fail(err) from None
            # the failure surfaces (and is retried) when the response is read

    async def end(self) -> None:
        if self._ended:
            if not self._spec.cardinality.client_streaming:
                return
            raise ProtocolError("Stream was already ended")
        self._ended = True
        attempt = self._attempt
        if attempt is None or attempt.stream is None:
            return
        try:
            await attempt.end()
        except BaseException as exc:
            err = self._classify(exc)
            if not isinstance(err, AttemptError) or self._committed:
                raise self._fail(err) from None

    async def recv_initial_metadata(self) -> None:
        await self._recv(headers_only=True)

    async def recv_message(self) -> Any:
        return await self._recv(headers_only=False)

    async def _recv(self, *, headers_only: bool) -> Any:
        while True:
            attempt = self._attempt
            try:
                if attempt is None:
                    if self._done:
                        return None
                    attempt = await self._start_attempt()
                if headers_only:
                    if not attempt.headers_done:
                        await attempt.recv_headers()
                    self._on_headers(attempt)
                    return None
                message = await attempt.recv_message()
            except BaseException as exc:
                err = self._classify(exc)
                if attempt is not None and attempt.headers_done and attempt.trailers_only:
                    self.trailing_metadata = attempt.trailing_metadata
                if isinstance(err, AttemptError) and await self._retry(err):
                    continue
                raise self._fail(err) from None
            self._on_headers(attempt)
            if message is None:
                self.trailing_metadata = attempt.trailing_metadata
                if self._client.throttle is not None:
                    self._client.throttle.on_success()
                self._done_receiving()
                return None
            self.info.msg_received += 1
            for hook in self._spec.hooks.on_message_received:
                hook(self.info)
            return message

    def _on_headers(self, attempt: Attempt) -> None:
        if not self._committed and attempt.headers_done:
            self.initial_metadata = attempt.initial_metadata
            self._commit()

    def _done_receiving(self) -> None:
        # the attempt ended OK: keep it for the metadata, but its stream is over
        attempt = self._attempt
        if attempt is not None:
            attempt.close()

    def __aiter__(self) -> ClientCall:
        return self

    async def __anext__(self) -> Any:
        message = await self.recv_message()
        if message is None:
            raise StopAsyncIteration
        return message

    async def recv_trailing_metadata(self) -> None:
        while await self.recv_message() is not None:
            pass

    async def cancel(self) -> None:
        self._finish(asyncio.CancelledError())

    # --- shortcuts used by the stubs ------------------------------------------------------

    async def unary(self, request: Any) -> Any:
        """Send one request, return the one response (unary-unary): the stream API's steps in
        one attempt coroutine, with the same retries."""
        self._begin()
        try:
            reply = await self._unary(request)
        except BaseException as exc:
            self._finish(exc)
            raise
        self._finish(None)
        return reply

    async def _unary(self, request: Any) -> Any:
        client = self._client
        spec = self._spec
        data = client.codec.encode(request, spec.request_type)
        if len(data) > client.max_send:
            raise RpcError(
                Status.RESOURCE_EXHAUSTED,
                f"Sent message larger than max ({len(data)} vs. {client.max_send})",
            )
        data = frame(gzip_compress(data), True) if spec.compress else frame(data)
        info = self.info
        info.msg_sent = 1
        for hook in spec.hooks.on_message_sent:
            hook(info)
        self._buffer = [data]
        self._ended = self._request_started = True
        self._sent_messages = 1
        while True:
            attempt = Attempt(client.codec, client.details_codec, spec.reply_type, spec.max_receive)
            self._attempt = attempt
            try:
                endpoint = client.pool.pick(self._endpoint)
                self._endpoint = endpoint
                info.peer = endpoint.target
                info.attempts += 1
                protocol = endpoint.ready()
                if protocol is None:
                    try:
                        protocol = await endpoint.connect(info.time_remaining())
                    except ConnectFailed as exc:
                        raise AttemptError(exc.status, exc.message, sent=False) from None
                prefix = spec.headers_for(endpoint)
                reply = await attempt.unary(protocol, prefix, self._headers(), data)
            except BaseException as exc:
                err = self._classify(exc)
                if isinstance(err, AttemptError) and await self._retry(err):
                    continue
                raise self._fail(err) from None
            break
        self._committed = True
        if client.throttle is not None:
            client.throttle.on_success()
        info.msg_received = 1
        for hook in spec.hooks.on_message_received:
            hook(info)
        return reply
