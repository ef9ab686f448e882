"""MultiplexedRedis against a real redis-server: replies reach the caller that sent the command
(also after others timed out), a hung or dead server fails commands instead of hanging them,
AUTH and SELECT, scripts after SCRIPT FLUSH; its parser against random replies split anywhere.
And the pool's retry: a command on a connection a Redis restart left stale is retried."""

from __future__ import annotations

import asyncio
import gc
import socket
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from conftest import settings
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from redis_process import RedisProcess

from grpcstack.redis_multiplexed import MultiplexedRedis, ReplyError, ReplyParser, encode_command
from grpcstack.resources import Resources

SLOW = "local t = redis.call('TIME') local stop = t[1] * 1e6 + t[2] + ARGV[1] * 1e3 " + (
    "repeat t = redis.call('TIME') until t[1] * 1e6 + t[2] >= stop return ARGV[2]"
)


@pytest.fixture
async def mux(redis_process: Any) -> Any:
    client = MultiplexedRedis.from_url(redis_process.url + "/5")
    yield client
    await client.close()


async def test_reply_types(mux: MultiplexedRedis) -> None:
    assert await mux.execute("PING") == b"PONG"
    assert await mux.execute("SET", "k", b"\x00\r\nbinary") == b"OK"
    assert await mux.get("k") == b"\x00\r\nbinary"
    assert await mux.get("missing") is None
    assert await mux.execute("INCRBY", "n", 41) == 41
    assert await mux.execute("RPUSH", "l", "a", "", "c") == 3
    assert await mux.execute("LRANGE", "l", 0, -1) == [b"a", b"", b"c"]
    nested = "return {1, {'x', {2}}, redis.call('GET', 'missing') and 1 or 0}"
    assert await mux.execute("EVAL", nested, 0) == [1, [b"x", [2]], 0]
    deep = "local t = {} local c = t for i = 1, 1100 do local n = {} c[1] = n c = n end return t"
    reply = await mux.execute("EVAL", deep, 0)  # valid, however deep: no recursion
    for _ in range(1100):
        (reply,) = reply
    assert reply == []
    with pytest.raises(ReplyError, match=r"^WRONGTYPE"):
        await mux.execute("INCR", "l")
    assert await mux.execute("GET", "k") == b"\x00\r\nbinary"  # the error shifted nothing
    with pytest.raises(TypeError):
        await mux.execute("SET", "k", True)
    for command in (["MULTI"], ["subscribe", "c"], [b"BLPOP", "q", 1], ["SELECT", 1]):
        with pytest.raises(ValueError, match="cannot run on the shared multiplexed connection"):
            await mux.execute(*command)  # they would hand replies to the wrong callers
    assert await mux.get("k") == b"\x00\r\nbinary"


async def test_a_large_value_and_many_concurrent_callers(mux: MultiplexedRedis) -> None:
    big = bytes(range(256)) * 8192  # 2 MiB: many reads
    assert await mux.execute("SET", "big", big) == b"OK"

    async def caller(i: int) -> None:
        for j in range(20):
            await mux.execute("SET", f"c{i}", f"{i}-{j}")
            assert await mux.get(f"c{i}") == f"{i}-{j}".encode()

    await asyncio.gather(*(caller(i) for i in range(50)), mux.get("big"))
    assert await mux.get("big") == big
    assert mux.connects == 1 and mux.pending == 0


async def test_a_caller_that_timed_out_does_not_shift_the_replies(mux: MultiplexedRedis) -> None:
    await mux.execute("SET", "k", "v")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await mux.execute("EVAL", SLOW, 0, 300, "slow reply")
    assert await mux.get("k") == b"v"  # not the slow reply, which came first
    assert mux.connects == 1


async def test_scripts_survive_script_flush(mux: MultiplexedRedis) -> None:
    script = mux.script("return {KEYS[1], ARGV[1]}")
    assert await script(keys=["a"], args=[1]) == [b"a", b"1"]  # NOSCRIPT, then EVAL
    assert await script(keys=["b"], args=[2]) == [b"b", b"2"]  # EVALSHA
    await mux.execute("SCRIPT", "FLUSH")
    assert await script(keys=["c"], args=[3]) == [b"c", b"3"]
    stats = await mux.execute("INFO", "commandstats")
    assert b"cmdstat_evalsha:calls=3," in stats and b"cmdstat_eval:calls=2," in stats
    with pytest.raises(ReplyError, match="ERR"):
        await mux.script("return redis.call('NOPE')")()


async def test_a_hung_server_fails_the_waiting_commands(redis_process: Any) -> None:
    mux = MultiplexedRedis.from_url(redis_process.url, stall_timeout=0.3)
    try:
        assert await mux.execute("PING") == b"PONG"
        redis_process.pause()
        try:
            started = time.monotonic()
            results = await asyncio.gather(
                *(mux.get(f"k{i}") for i in range(5)), return_exceptions=True
            )
            assert all(isinstance(r, ConnectionError) for r in results), results
            assert "did not answer for 0.3 s" in str(results[0])
            assert time.monotonic() - started < 5
        finally:
            redis_process.resume()
        assert await mux.execute("PING") == b"PONG"  # a new connection
        assert mux.connects == 2
    finally:
        await mux.close()


async def test_a_dead_server_fails_fast_and_is_found_again(redis_process: Any) -> None:
    mux = MultiplexedRedis.from_url(redis_process.url, backoff=(30, 30))
    try:
        await mux.execute("SET", "k", "v")
        slow = asyncio.ensure_future(mux.execute("EVAL", SLOW, 0, 5000, "x"))
        await asyncio.sleep(0)  # written
        redis_process.stop()
        with pytest.raises(ConnectionError, match="lost"):
            await slow  # in flight when the server died: failed, not retried
        with pytest.raises(ConnectionError, match="Connect call failed"):
            await mux.get("k")
        assert mux.attempts == 2
        with pytest.raises(ConnectionError, match="unreachable"):
            await mux.get("k")  # within the back-off: no connect attempt
        assert mux.attempts == 2
        redis_process.start()  # same port, empty
        mux.backoff = (0.05, 0.05)
        mux._down_until = 0.0  # the back-off over
        async with asyncio.timeout(10):
            while True:
                try:
                    assert await mux.get("k") is None
                    break
                except ConnectionError:
                    await asyncio.sleep(0.05)
        assert mux.connects == 2
    finally:
        await mux.close()
    with pytest.raises(ConnectionError, match="closed"):
        await mux.get("k")


async def test_a_connection_lost_before_its_caller_resumed_fails_the_command(
    mux: MultiplexedRedis,
) -> None:
    assert await mux.execute("PING") == b"PONG"
    proto = mux._proto
    assert proto is not None
    proto.connection_lost(None)  # as if the server hung up just now
    with pytest.raises(ConnectionError, match="closed by the server"):
        await proto.send(encode_command(["PING"]))  # a waiter holding the old connection
    assert await mux.execute("PING") == b"PONG"  # the next command reconnects
    assert mux.connects == 2


async def test_pending_commands_are_bounded(redis_process: Any) -> None:
    mux = MultiplexedRedis.from_url(redis_process.url, max_pending=3, stall_timeout=30)
    try:
        slow = [asyncio.ensure_future(mux.execute("EVAL", SLOW, 0, 200, i)) for i in range(3)]
        await asyncio.sleep(0)
        with pytest.raises(ConnectionError, match="3 Redis commands are already waiting"):
            await mux.get("k")
        assert await asyncio.gather(*slow) == [b"0", b"1", b"2"]
        assert await mux.get("k") is None
    finally:
        await mux.close()


async def test_auth_and_database(tmp_path: Path) -> None:
    server = RedisProcess(tmp_path)
    server.start()
    try:
        admin = MultiplexedRedis.from_url(server.url)
        await admin.execute("CONFIG", "SET", "requirepass", "s3cret:/@")
        await admin.close()
        url = f"redis://:s3cret%3A%2F%40@127.0.0.1:{server.port}/3"
        mux = MultiplexedRedis.from_url(url)
        await mux.execute("SET", "where", "db3")
        await mux.close()
        user = MultiplexedRedis.from_url(
            f"redis://default:s3cret%3A%2F%40@127.0.0.1:{server.port}?db=3"
        )
        assert await user.get("where") == b"db3"
        await user.close()
        other = MultiplexedRedis.from_url(url, db=4)  # the keyword wins over the URL
        assert await other.get("where") is None
        await other.close()
        wrong = MultiplexedRedis.from_url(f"redis://:nope@127.0.0.1:{server.port}/3")
        with pytest.raises(ReplyError, match=r"WRONGPASS|invalid"):
            await wrong.get("where")
        await wrong.close()
    finally:
        server.stop()


async def test_unix_socket(tmp_path: Path) -> None:
    sock = tmp_path / "redis.sock"
    server = RedisProcess(tmp_path, ["--unixsocket", str(sock), "--unixsocketperm", "700"])
    server.start()
    try:
        mux = MultiplexedRedis.from_url(f"unix://{sock}?db=2")
        assert mux.path == str(sock) and mux.db == 2
        assert await mux.execute("PING") == b"PONG"
        await mux.close()
    finally:
        server.stop()


def test_urls() -> None:
    assert MultiplexedRedis.supports("redis://h") and MultiplexedRedis.supports("unix:///s")
    assert not MultiplexedRedis.supports("rediss://h")
    with pytest.raises(ValueError, match="rediss"):
        MultiplexedRedis.from_url("rediss://h:1")
    mux = MultiplexedRedis.from_url("redis://u:p%40ss@example:7000/9")
    assert (mux.host, mux.port, mux.db, mux.username, mux.password) == (
        "example",
        7000,
        9,
        "u",
        "p@ss",
    )
    query = MultiplexedRedis.from_url("unix:///run/r.sock?db=3&password=p%40ss&username=u")
    assert (query.path, query.db, query.username, query.password) == ("/run/r.sock", 3, "u", "p@ss")
    assert MultiplexedRedis.from_url("redis://h/x").db == 0  # not a number: ignored, as redis-py
    assert Resources(settings(REDIS_URL="rediss://h")).redis_multiplexed() is None
    assert (
        Resources(settings(REDIS_URL="redis://h", REDIS_MULTIPLEXED=False)).redis_multiplexed()
        is None
    )


async def test_garbage_from_the_server_fails_the_callers() -> None:
    served = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read(100)
            writer.write(b"?what\r\n")
            await writer.drain()
            await reader.read(100)  # until the client hangs up
        finally:
            writer.close()
            served.set()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    mux = MultiplexedRedis("127.0.0.1", port)
    try:
        with pytest.raises(ConnectionError, match="protocol error"):
            await mux.get("k")
    finally:
        await mux.close()
        await served.wait()
        server.close()
        await server.wait_closed()


async def test_a_server_that_accepts_and_drops_gets_the_back_off(tmp_path: Path) -> None:
    server = RedisProcess(tmp_path, ["--maxclients", "1"])
    server.start()
    hog = socket.create_connection(("127.0.0.1", server.port))  # the only client slot
    hog.sendall(b"PING\r\n")
    hog.recv(100)
    mux = MultiplexedRedis("127.0.0.1", server.port, backoff=(30, 30))
    try:
        for _ in range(20):
            with pytest.raises((ConnectionError, ReplyError)):
                await mux.get("k")
        assert mux.attempts == 1 and mux.connects == 0  # not a connection per command
    finally:
        await mux.close()
        hog.close()
        server.stop()


async def test_close_during_a_connect_its_callers_left() -> None:
    answered = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read(100)  # the hello
            await answered.wait()  # answered only after the client was closed
            writer.write(b"+OK\r\n+PONG\r\n")
            await writer.drain()
            await reader.read(100)
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    loop = asyncio.get_running_loop()
    problems: list[str] = []
    loop.set_exception_handler(lambda _loop, ctx: problems.append(ctx["message"]))
    mux = MultiplexedRedis("127.0.0.1", server.sockets[0].getsockname()[1], password="pw")
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await mux.get("k")  # gives up; the shared connect goes on
        late = asyncio.ensure_future(mux.get("k"))  # joins the same attempt
        await asyncio.sleep(0)
        await mux.close()
        with pytest.raises(ConnectionError, match="closed"):
            await late  # at once, not after the connect timeout
        answered.set()
        gc.collect()
        await asyncio.sleep(0.05)
    finally:
        answered.set()
        server.close()
        await server.wait_closed()
        loop.set_exception_handler(None)
    assert not problems


async def test_the_pool_retries_a_command_on_a_connection_a_restart_left_stale(
    redis_process: Any,
) -> None:
    res = Resources(settings(REDIS_URL=redis_process.url, REDIS_MULTIPLEXED=False))
    try:
        client = res.redis(2)
        await asyncio.gather(*(client.set(f"k{i}", 1) for i in range(5)))  # 5 connections
        redis_process.stop()
        redis_process.start()  # every pooled connection is stale now
        for _ in range(5):
            assert await client.get("k1") is None  # REDIS_RETRIES (1) reconnects
        assert [k async for k in client.scan_iter(match="*")] == []
    finally:
        await res.close()


# --- the parser, against random replies cut at random places ------------------------------


def _encode(value: Any) -> bytes:
    if value is None:
        return b"$-1\r\n"
    if isinstance(value, bytes):
        return b"$%d\r\n%s\r\n" % (len(value), value)
    if isinstance(value, int):
        return b":%d\r\n" % value
    if isinstance(value, ReplyError):
        return b"-%s\r\n" % str(value).encode()
    if isinstance(value, tuple):  # a simple string
        return b"+%s\r\n" % value[0]
    return b"*%d\r\n" % len(value) + b"".join(_encode(v) for v in value)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return value[0]
    if isinstance(value, ReplyError):
        return ("error", str(value))
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


_line = st.binary(max_size=20).filter(lambda b: b"\r" not in b and b"\n" not in b)
_scalar = st.one_of(
    st.none(),
    st.binary(max_size=300),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    _line.map(lambda b: (b,)),
    _line.map(lambda b: ReplyError(b.decode("latin-1"))),
)
_reply = st.recursive(_scalar, lambda inner: st.lists(inner, max_size=5), max_leaves=20)


@hsettings(max_examples=300, deadline=None)
@given(replies=st.lists(_reply, min_size=1, max_size=8), data=st.data())
def test_parser_matches_the_encoding_at_any_split(replies: list[Any], data: Any) -> None:
    stream = b"".join(_encode(r) for r in replies)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    parser = ReplyParser()
    parsed = []
    last = 0
    for cut in [*cuts, len(stream)]:
        parsed += parser.feed(stream[last:cut])
        last = cut
    assert not parser.buf and not parser.stack
    assert [_plain(v) for v in parsed] == [_plain(r) for r in replies]


def test_parser_null_array_and_bad_streams() -> None:
    assert ReplyParser().feed(b"*-1\r\n*0\r\n") == [None, []]
    for bad in (b"?x\r\n", b"$3\r\nabcd\r\n", b":1x\r\n"):
        with pytest.raises(ValueError):
            ReplyParser().feed(bad)


def test_a_long_array_cut_in_many_reads_is_parsed_once() -> None:
    n = 200_000
    stream = b"*%d\r\n" % n + b"".join(b"$%d\r\n%d\r\n" % (len(b"%d" % i), i) for i in range(n))
    started = time.process_time()
    assert len(ReplyParser().feed(stream)[0]) == n
    whole = time.process_time() - started
    parser = ReplyParser()
    started = time.process_time()
    out = []
    for at in range(0, len(stream), 4096):
        out += parser.feed(stream[at : at + 4096])
    cut = time.process_time() - started
    assert len(out[0]) == n and out[0][-1] == b"%d" % (n - 1)
    assert cut < 3 * whole + 0.2  # re-parsing from the array's start per read was ~10x


async def test_split_replies_retain_no_memory(mux: MultiplexedRedis) -> None:
    big = b"x" * (1 << 20)  # several reads per GET
    await mux.execute("SET", "big", big)
    assert await mux.get("big") == big
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(30):
            assert await mux.get("big") == big
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 4 << 20, f"{grown / 2**20:.1f} MiB retained after 30 GETs of 1 MiB"


def test_encode_command() -> None:
    assert encode_command([b"SET", "k", 1, 2.5]) == (
        b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n1\r\n$3\r\n2.5\r\n"
    )
