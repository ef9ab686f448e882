"""MultiplexedRedis: one Redis connection shared by every task, commands pipelined.

Redis answers a connection's commands in the order they were sent, so concurrent callers need
not take turns on a pool: each command is written at once (the writes of one loop iteration go
out in one send) and its future joins a queue that the replies resolve in order. The cache's
hot commands (an L2 read, a guarded write) cost ~7 us of CPU this way against ~50-75 us through
redis-py's pool (its connection checkout, per-read timeouts, retry and event wrappers), measured
with 10 concurrent callers on one core.

What a pool gives, kept:

* a caller's own timeout (``asyncio.timeout``) cancels only its wait: the reply still arrives
  later and is dropped, so the next caller's reply is never shifted;
* a server that stops answering (replies overdue by ``stall_timeout`` while commands wait)
  loses its connection: every waiting command fails with ``ConnectionError``, none hangs;
* a lost connection fails the commands in flight (never retried: a write may have happened)
  and the next command reconnects (one attempt shared by concurrent callers, connected once
  its AUTH/SELECT/PING are answered); after a failed connect, commands fail at once for a
  short, growing back-off instead of each waiting out a connect timeout;
* at most ``max_pending`` commands wait at once: past that a command fails at once;
* commands that change the connection's state or hold it (MULTI, SUBSCRIBE, SELECT, BLPOP,
  ...) are refused: on a shared connection they would misroute or stall the others' replies.

Scope: RESP2 replies (parsed incrementally: a reply cut anywhere, however long or deep, is
parsed once), ``redis://`` and ``unix://`` URLs with user/password and database; one server (a
Redis Cluster or a ``rediss://`` URL stays on redis-py). Replies are bytes (bulk and simple
strings), int, None or lists of them; an error reply raises ``ReplyError``.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import deque
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

Arg = bytes | str | int | float


#: commands that change a connection's state or hold it: not for a connection callers share
_SHARED_CONNECTION_BREAKERS = frozenset(
    """MULTI EXEC DISCARD WATCH UNWATCH SUBSCRIBE PSUBSCRIBE SSUBSCRIBE UNSUBSCRIBE PUNSUBSCRIBE
    SUNSUBSCRIBE MONITOR SELECT AUTH HELLO RESET QUIT CLIENT SYNC PSYNC REPLCONF BLPOP BRPOP
    BLMOVE BRPOPLPUSH BLMPOP BZPOPMIN BZPOPMAX BZMPOP XREAD XREADGROUP WAIT WAITAOF""".split()
)


class ReplyError(Exception):
    """An error reply from Redis (e.g. ``WRONGTYPE ...``, ``NOSCRIPT ...``)."""


def encode_command(args: Sequence[Arg]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, bool):
            raise TypeError("a Redis argument cannot be a bool")
        elif isinstance(arg, int | float):
            data = repr(arg).encode()
        else:
            raise TypeError(f"a Redis argument cannot be a {type(arg).__name__}")
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class ReplyParser:
    """Incremental RESP2: bytes in, complete replies out. Arrays in progress are kept between
    reads, so a long array is parsed once however it was cut, and nesting needs no recursion.
    An error reply's value is a ``ReplyError`` (returned, not raised: it belongs to one
    caller). A stream that is not RESP2 raises ValueError."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.stack: list[list[Any]] = []  # arrays in progress: [items, still to come]

    def feed(self, data: bytes) -> list[Any]:
        buf = self.buf
        buf += data
        size = len(buf)
        stack = self.stack
        out: list[Any] = []
        pos = 0
        try:
            while pos < size:
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    break
                kind = buf[pos]
                value: Any
                if kind == 36:  # $ bulk string
                    length = int(buf[pos + 1 : end])
                    if length < 0:
                        value, pos = None, end + 2
                    else:
                        stop = end + 2 + length
                        if size < stop + 2:
                            break
                        if buf[stop : stop + 2] != b"\r\n":
                            raise ValueError("a bulk string longer than announced")
                        value, pos = bytes(buf[end + 2 : stop]), stop + 2
                elif kind == 42:  # * array
                    count = int(buf[pos + 1 : end])
                    pos = end + 2
                    if count > 0:
                        stack.append([[], count])
                        continue
                    value = None if count < 0 else []
                elif kind == 58:  # : integer
                    value, pos = int(buf[pos + 1 : end]), end + 2
                elif kind == 43:  # + simple string
                    value, pos = bytes(buf[pos + 1 : end]), end + 2
                elif kind == 45:  # - error
                    text = bytes(buf[pos + 1 : end]).decode(errors="replace")
                    value, pos = ReplyError(text), end + 2
                else:
                    raise ValueError(f"not a RESP2 reply: {bytes(buf[pos : pos + 16])!r}")
                while stack:  # the value completes its array, maybe the enclosing ones too
                    top = stack[-1]
                    top[0].append(value)
                    top[1] -= 1
                    if top[1]:
                        break
                    stack.pop()
                    value = top[0]
                else:
                    out.append(value)
        finally:
            del buf[:pos]
        return out


class _Protocol(asyncio.Protocol):
    def __init__(self, owner: MultiplexedRedis) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.parser = ReplyParser()
        self.out: list[bytes] = []
        self.closed = False
        self.error: Exception | None = None
        self.progress = time.monotonic()  # last write to an idle connection, or last reply byte
        self.watchdog: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, data: bytes) -> asyncio.Future[Any]:
        loop = self.owner.loop
        future = loop.create_future()
        if self.closed:  # lost between a connect and its waiter's turn: never wait on it
            future.set_exception(self.error or ConnectionError("Redis connection closed"))
            return future
        if not self.waiting:
            self.progress = time.monotonic()
            if self.watchdog is None:
                self.watchdog = loop.call_later(self.owner.stall_timeout, self._check_stall)
        self.waiting.append(future)
        if not self.out:
            loop.call_soon(self._flush)
        self.out.append(data)
        return future

    def _flush(self) -> None:
        if self.out and not self.closed and self.transport is not None:
            self.transport.write(b"".join(self.out))
        self.out.clear()

    def _check_stall(self) -> None:
        self.watchdog = None
        if self.closed or not self.waiting:
            return
        overdue = time.monotonic() - self.progress - self.owner.stall_timeout
        if overdue >= 0:
            self.abort(ConnectionError(f"Redis did not answer for {self.owner.stall_timeout:g} s"))
            return
        self.watchdog = self.owner.loop.call_later(-overdue, self._check_stall)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.progress = time.monotonic()
        try:
            replies = self.parser.feed(data)
        except Exception as exc:  # the stream cannot be trusted any more
            self.abort(ConnectionError(f"Redis protocol error: {exc!r}"))
            return
        waiting = self.waiting
        for value in replies:
            if not waiting:
                self.abort(ConnectionError("Redis protocol error: a reply nobody asked for"))
                return
            future = waiting.popleft()
            if not future.done():  # a caller that timed out has left
                if isinstance(value, ReplyError):
                    future.set_exception(value)
                else:
                    future.set_result(value)

    def abort(self, error: Exception) -> None:
        if self.closed:
            return
        self.closed = True
        self.error = error
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(error)
        self.out.clear()
        if self.transport is not None:
            self.transport.abort()
        self.owner._lost(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.abort(ConnectionError(f"Redis connection lost: {exc or 'closed by the server'}"))


class MultiplexedRedis:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 6379,
        *,
        path: str | None = None,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        connect_timeout: float = 1.0,
        stall_timeout: float = 1.0,
        max_pending: int = 10_000,
        backoff: tuple[float, float] = (0.05, 1.0),
    ) -> None:
        self.host, self.port, self.path = host, port, path
        self.db = db
        self.username, self.password = username, password
        self.connect_timeout = connect_timeout
        self.stall_timeout = stall_timeout
        self.max_pending = max_pending
        self.backoff = backoff
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        self._down_until = 0.0
        self._down_error: Exception | None = None
        self._next_backoff = backoff[0]
        self._closed = False
        self._open_task: asyncio.Task[_Protocol] | None = None
        self._allowed: set[Arg] = {b"GET", b"EVALSHA", b"EVAL"}
        self.attempts = 0  # connects tried
        self.connects = 0  # connections made
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> MultiplexedRedis:
        """``redis://[[user]:password@]host[:port][/db]`` or ``unix://[[user]:password@]/path``;
        ``db``, ``username`` and ``password`` may also be query parameters (as redis-py reads
        them; its other parameters tune its pool and are ignored here); kwargs win over the URL."""
        parts = urlsplit(url)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        username = unquote(parts.username) if parts.username else query.get("username")
        password = unquote(parts.password) if parts.password else query.get("password")
        options: dict[str, Any] = {"username": username or None, "password": password}
        if parts.scheme == "redis":
            options["host"] = parts.hostname or "127.0.0.1"
            options["port"] = parts.port or 6379
            db = parts.path.replace("/", "")
            if db.isdigit():  # redis-py ignores a path that is not a number, so do we
                options["db"] = int(db)
        elif parts.scheme == "unix":
            options["path"] = unquote(parts.path)
        else:
            raise ValueError(f"MultiplexedRedis serves redis:// and unix:// URLs, not {url!r}")
        if "db" in query:
            options["db"] = int(query["db"])
        options.update(kwargs)
        return cls(**options)

    @staticmethod
    def supports(url: str) -> bool:
        return urlsplit(url).scheme in ("redis", "unix")

    @property
    def pending(self) -> int:
        return len(self._proto.waiting) if self._proto is not None else 0

    async def execute(self, *args: Arg) -> Any:
        """Send one command and wait for its reply. Commands that change the connection's state
        or block it (MULTI, SUBSCRIBE, SELECT, BLPOP, ...) are refused: they would hand other
        callers' replies to the wrong caller or stall them all; use the pool for those."""
        if args[0] not in self._allowed:
            self._check(args[0])
        proto = self._proto
        if proto is None or proto.closed:
            proto = await self._connect()
        if len(proto.waiting) >= self.max_pending:
            raise ConnectionError(f"{self.max_pending} Redis commands are already waiting")
        return await proto.send(encode_command(args))

    def _check(self, name: Arg) -> None:
        text = name.decode() if isinstance(name, bytes) else str(name)
        if text.upper() in _SHARED_CONNECTION_BREAKERS:
            raise ValueError(f"{text} cannot run on the shared multiplexed connection")
        if len(self._allowed) < 256:
            self._allowed.add(name)

    async def get(self, key: str | bytes) -> bytes | None:
        return await self.execute(b"GET", key)  # type: ignore[no-any-return]

    def script(self, source: str) -> Script:
        return Script(self, source)

    async def close(self) -> None:
        self._closed = True
        if self._open_task is not None:
            self._open_task.cancel()  # its waiters get "closed", not a connect timeout later
        if self._proto is not None:
            self._proto.abort(ConnectionError("the client was closed"))
            self._proto = None

    # --- connecting -------------------------------------------------------------------------

    async def _connect(self) -> _Protocol:
        if self._closed:
            raise ConnectionError("the client was closed")
        self.loop = asyncio.get_running_loop()
        if time.monotonic() < self._down_until:
            raise ConnectionError(f"Redis is unreachable: {self._down_error!r}")
        if self._connecting is None:
            self.attempts += 1
            self._connecting = self.loop.create_future()
            task = self._open_task = self.loop.create_task(self._open())
            task.add_done_callback(self._opened)
        # shielded: a caller timing out does not stop the attempt the others share
        return await asyncio.shield(self._connecting)

    async def _open(self) -> _Protocol:
        async with asyncio.timeout(self.connect_timeout):
            if self.path is not None:
                _, proto = await self.loop.create_unix_connection(
                    lambda: _Protocol(self), self.path
                )
            else:
                _, proto = await self.loop.create_connection(
                    lambda: _Protocol(self), self.host, self.port
                )
            hello: list[asyncio.Future[Any]] = []
            if self.password is not None:
                auth = [b"AUTH", self.password]
                if self.username is not None:
                    auth.insert(1, self.username)
                hello.append(proto.send(encode_command(auth)))
            if self.db:
                hello.append(proto.send(encode_command([b"SELECT", self.db])))
            # connected means answered: a server that accepts and drops (maxclients reached)
            # is a failed connect, with its back-off, not a success per command
            hello.append(proto.send(encode_command([b"PING"])))
            try:
                for reply in hello:
                    await reply
            except BaseException:
                proto.abort(ConnectionError("Redis did not accept the connection"))
                for reply in hello:  # the first error is raised; the others are no news
                    if not reply.cancelled():
                        reply.exception()
                raise
        return proto

    def _opened(self, task: asyncio.Task[_Protocol]) -> None:
        waiter, self._connecting, self._open_task = self._connecting, None, None
        assert waiter is not None
        error = ConnectionError("the client was closed") if task.cancelled() else task.exception()
        if error is None:
            proto = task.result()
            if not self._closed:
                self._proto = proto
                self.connects += 1
                self._next_backoff = self.backoff[0]
                waiter.set_result(proto)
                return
            proto.abort(ConnectionError("the client was closed"))
            error = ConnectionError("the client was closed")
        elif not self._closed:
            if isinstance(error, TimeoutError):
                error = ConnectionError(f"Redis connect timed out after {self.connect_timeout:g} s")
            elif not isinstance(error, ConnectionError | ReplyError):
                error = ConnectionError(f"Redis connect failed: {error!r}")
            self._down_error = error
            self._down_until = time.monotonic() + self._next_backoff
            self._next_backoff = min(self.backoff[1], 2 * self._next_backoff)
        waiter.set_exception(error)
        waiter.exception()  # retrieved: no warning when every caller has left

    def _lost(self, proto: _Protocol) -> None:
        if self._proto is proto:
            self._proto = None


class Script:
    """A Lua script run by EVALSHA, sent whole (EVAL, which also caches it) on NOSCRIPT."""

    def __init__(self, client: MultiplexedRedis, source: str) -> None:
        self.client = client
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, keys: Sequence[Arg] = (), args: Sequence[Arg] = ()) -> Any:
        try:
            return await self.client.execute(b"EVALSHA", self.sha, len(keys), *keys, *args)
        except ReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self.client.execute(b"EVAL", self.source, len(keys), *keys, *args)
