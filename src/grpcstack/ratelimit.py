"""Rate limiters: a sliding-window counter, in process or in Redis.

The sliding-window counter keeps one counter per fixed window and weighs the previous window by
the part of it still inside the sliding window: ``previous * (1 - elapsed) + current``. Unlike a
fixed window it does not let 2x the limit through at a window boundary, and it costs two integers
per key. Several limits (per user, global) are checked together and counted only when all allow.

``RedisLimiter`` runs the same arithmetic in ONE Lua script per request, or per lease (below),
for all limits on Redis's own clock, so every process sharing the Redis enforces one limit. The
script touches only the keys it is passed (one hash per limit), all under the limiter's
``{hash tag}``: one slot, so it runs on Redis Cluster too (the price: one node holds every
counter of a limiter).

Leases (``lease`` > 1) take the round trip off most requests: when a process has no tokens for
a limit it reserves up to ``lease`` of them (and at most ``lease_fraction`` of the limit) in the
same script call, counted in Redis at once, and spends them locally until they run out or Redis's
window ends. Tokens are counted before they are spent, so the processes together never admit more
than the limit; the price is under-admission: tokens a process holds but does not spend before
the window ends are lost to the others, at most ``processes x lease`` per limit per window.
Concurrent requests short of the same tokens share one reservation (single flight), and a lease
running low is topped up (back to its size) in the background before it runs out. A refusal
from Redis is kept until its retry hint (the earliest the limit could allow again), so a caller
over its limit costs no round trips either.

When Redis fails it degrades to the in-process limiter (or fails open/closed, as configured)
behind a circuit breaker: one failure per state counts (a burst of concurrent failures is one
failure, not a jump to the longest backoff); when the backoff ends, ONE request probes Redis
while the others stay degraded; the probe's outcome closes the breaker or doubles the backoff.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

    from .redis_multiplexed import MultiplexedRedis

log = logging.getLogger("grpcstack.ratelimit")


@dataclass(frozen=True)
class Limit:
    key: str
    max_requests: int


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after: float = 0.0  # seconds until a request would be allowed
    limit: Limit | None = None  # the limit that refused
    backend: str = "memory"


def retry_after(prev: float, cur: float, limit: int, elapsed: float, window: float) -> float:
    """Seconds until ``prev * (1 - f) + cur + 1 <= limit`` holds again (f = window fraction)."""
    if cur + 1 > limit:
        # wait for the next window; there the current count becomes the weighted previous one
        later = 1 - (limit - 1) / cur if cur > 0 else 0.0
        return (1 - elapsed) * window + max(0.0, later) * window
    needed = 1 - (limit - cur - 1) / prev if prev > 0 else elapsed
    return max(0.0, needed - elapsed) * window


class MemoryLimiter:
    """Sliding-window counters in this process (bounded: idle keys are swept every window)."""

    name = "memory"

    def __init__(self, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.clock = clock
        self._counts: dict[str, list[float]] = {}  # key -> [window index, previous, current]
        self._sweep_at = 0.0
        self._allowed = Decision(True, backend=self.name)  # frozen: one for every allowed hit

    def hit(self, limits: Sequence[Limit]) -> Decision:
        now = self.clock()
        window = self.window
        index = math.floor(now / window)
        elapsed = now / window - index
        if now >= self._sweep_at:
            self._counts = {k: v for k, v in self._counts.items() if v[0] >= index - 1}
            self._sweep_at = now + window
        states = []
        worst: Decision | None = None
        for limit in limits:
            state = self._counts.get(limit.key)
            if state is None:
                state = self._counts[limit.key] = [index, 0.0, 0.0]
            elif state[0] != index:
                # roll forward: the current window becomes the previous one (or nothing, if older)
                state[1] = state[2] if state[0] == index - 1 else 0.0
                state[2] = 0.0
                state[0] = index
            prev, cur = state[1], state[2]
            if prev * (1 - elapsed) + cur + 1 > limit.max_requests:
                wait = retry_after(prev, cur, limit.max_requests, elapsed, window)
                if worst is None or wait > worst.retry_after:
                    worst = Decision(False, max(wait, 0.001), limit, self.name)
            states.append(state)
        if worst is not None:
            return worst
        for state in states:
            state[2] += 1
        return self._allowed


# KEYS: one hash per limit {w: window index, p: previous count, c: current count};
# ARGV: window in ms, then per limit its max and how many tokens to take (>= 1; more = a lease).
# All limits allow or nothing is counted; each grants min(wanted, what its window has left).
# Returns {1, ms left in the window, grant per limit} or {0, retry-after ms, refusing limit}.
_LUA = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local window = tonumber(ARGV[1])
local index = math.floor(now / window)
local elapsed = (now - index * window) / window
local counts = {}
local worst, worst_i = -1, 0
for i = 1, #KEYS do
  local limit = tonumber(ARGV[2 * i])
  local h = redis.call('HMGET', KEYS[i], 'w', 'p', 'c')
  local w = tonumber(h[1])
  local prev, cur = 0, 0
  if w == index then
    prev, cur = tonumber(h[2]) or 0, tonumber(h[3]) or 0
  elseif w == index - 1 then
    prev = tonumber(h[3]) or 0
  end
  local used = prev * (1 - elapsed) + cur
  counts[i] = {prev, cur, math.min(tonumber(ARGV[2 * i + 1]), math.floor(limit - used))}
  if used + 1 > limit then
    local wait
    if cur + 1 > limit then
      local later = 0
      if cur > 0 then later = math.max(0, 1 - (limit - 1) / cur) end
      wait = (1 - elapsed) * window + later * window
    else
      local needed = elapsed
      if prev > 0 then needed = 1 - (limit - cur - 1) / prev end
      wait = math.max(0, needed - elapsed) * window
    end
    if wait > worst then worst, worst_i = wait, i end
  end
end
if worst_i > 0 then return {0, tostring(math.max(worst, 1)), worst_i} end
local out = {1, (index + 1) * window - now}
for i = 1, #KEYS do
  redis.call('HSET', KEYS[i], 'w', index, 'p', counts[i][1], 'c', counts[i][2] + counts[i][3])
  redis.call('PEXPIRE', KEYS[i], window * 2 + 1000)
  out[i + 2] = counts[i][3]
end
return out
"""

_ALLOWED = Decision(True, backend="redis")
# reservations a request may see spent by others before it counts itself exactly (each round
# serves at least one waiting request, so a burst of N requests short of tokens needs ~N/lease)
_LEASE_ROUNDS = 32


FailMode = Literal["local", "open", "closed"]
BreakerState = Literal["closed", "open", "half-open"]


class RedisLimiter:
    """The sliding-window counter in Redis: one atomic script per request for all limits."""

    name = "redis"

    def __init__(
        self,
        redis: Redis | RedisCluster,
        window: float,
        *,
        prefix: str = "grpcstack:rl",
        fail_mode: FailMode = "local",
        retry_backoff: float = 1.0,
        max_backoff: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        lease: int = 1,
        lease_fraction: float = 0.01,
        multiplexed: MultiplexedRedis | None = None,
    ) -> None:
        """``multiplexed``: the script runs over that pipelined connection (a fraction of the
        pool's CPU per call; what matters with ``lease`` 1, a round trip per request)."""
        self.redis = redis
        self.window = window
        self.prefix = prefix
        self.fail_mode = fail_mode
        self.fallback = MemoryLimiter(window, clock)
        self.clock = clock
        self.retry_backoff = retry_backoff
        self.max_backoff = max_backoff
        self._script: Any = (
            multiplexed.script(_LUA) if multiplexed is not None else redis.register_script(_LUA)
        )
        self.state: BreakerState = "closed"
        self._down_until = 0.0
        self._backoff = retry_backoff
        self._turn = 0  # bumped on every state change: only attempts of the current turn count
        self.failures = 0  # failures that counted (at most one per turn)
        self.attempts = 0  # script calls sent to Redis
        self.lease = max(1, lease)  # 1: one script call per request, nothing held locally
        self.lease_fraction = lease_fraction
        # key -> [tokens left, valid until (clock), low-water mark that starts a top-up]
        self._leases: dict[str, list[float]] = {}
        self._ahead: set[asyncio.Task[Decision]] = set()
        self._sizes: dict[int, int] = {}  # max_requests -> lease size
        self._flights: dict[tuple[str, ...], asyncio.Future[Decision | None]] = {}
        self._refused: dict[str, float] = {}  # key -> refused until (clock), lease mode only
        self._sweep_at = 0.0

    @property
    def degraded(self) -> bool:
        return self.state != "closed"

    def key(self, limit: Limit) -> str:
        return f"{{{self.prefix}}}:{limit.key}"

    def lease_size(self, limit: Limit) -> int:
        size = self._sizes.get(limit.max_requests)
        if size is None:
            size = max(1, min(self.lease, int(limit.max_requests * self.lease_fraction)))
            self._sizes[limit.max_requests] = size
        return size

    def take(self, limits: Sequence[Limit]) -> bool:
        """Spend one leased token of every limit, if all have one: no Redis call."""
        leases = self._leases
        now = self.clock()
        for limit in limits:
            lease = leases.get(limit.key)
            if lease is None or lease[0] < 1 or lease[1] <= now:
                return False
        low = False
        for limit in limits:
            lease = leases[limit.key]
            lease[0] -= 1
            low = low or lease[0] < lease[2]
        if low:
            self._top_up(limits, now)
        return True

    def _top_up(self, limits: Sequence[Limit], now: float) -> None:
        """A lease running low is topped up in the background (back to its size, no more), so
        requests do not stall on the round trip when it runs out."""
        short = [x for x in limits if self._leases[x.key][0] < self._leases[x.key][2]]
        if self.state != "closed" or tuple(x.key for x in short) in self._flights:
            return
        self._flight(short, [self.lease_size(x) - int(self._leases[x.key][0]) for x in short])

    async def hit(self, limits: Sequence[Limit]) -> Decision:
        if self.lease == 1:
            return await self._reserve(limits, [1] * len(limits))
        if self.take(limits):
            return _ALLOWED
        for _ in range(_LEASE_ROUNDS):
            now = self.clock()
            for limit in limits:  # Redis refused it lately: no count can allow it before then
                until = self._refused.get(limit.key)
                if until is not None and until > now:
                    return Decision(False, until - now, limit, self.name)
            short = [x for x in limits if not self._holds(x, now)]
            if not short:
                if self.take(limits):
                    return _ALLOWED
                continue
            if self.state != "closed":  # leased tokens are spent above; the rest is degraded
                return await self._reserve(limits, [1] * len(limits))
            wants = [self.lease_size(x) for x in short]
            if min(wants) == 1:  # a limit too small to lease: this request counts in Redis
                wants = [1 if self._holds(x, now) else self.lease_size(x) for x in limits]
                return await self._reserve(limits, wants, lease=True)
            refused = await asyncio.shield(self._flight(short, wants))
            if refused is not None:
                return refused
        return await self._reserve(limits, [1] * len(limits))  # lost every round: count exactly

    def _flight(self, short: list[Limit], wants: list[int]) -> asyncio.Future[Decision | None]:
        """The reservation under way for ``short``, or a new one in its own task (a request
        that leaves does not cancel what the others wait for). It resolves to Redis's refusal,
        which holds for every request waiting on it, or None."""
        key = tuple(x.key for x in short)
        flight = self._flights.get(key)
        if flight is None:
            loop = asyncio.get_running_loop()
            flight = self._flights[key] = loop.create_future()
            task = loop.create_task(self._reserve(short, wants, lease=True, take=False))
            self._ahead.add(task)  # referenced until done

            def landed(task: asyncio.Task[Decision], key: tuple[str, ...] = key) -> None:
                self._ahead.discard(task)
                done = self._flights.pop(key)
                ok = task.cancelled() or task.exception() is not None or task.result().allowed
                done.set_result(None if ok else task.result())

            task.add_done_callback(landed)
        return flight

    def _holds(self, limit: Limit, now: float) -> bool:
        lease = self._leases.get(limit.key)
        return lease is not None and lease[0] >= 1 and lease[1] > now

    async def _reserve(
        self,
        limits: Sequence[Limit],
        wants: Sequence[int],
        *,
        lease: bool = False,
        take: bool = True,
    ) -> Decision:
        """One script call for ``limits``: ``wants`` tokens each. With ``lease`` the grants beyond
        this request's own token (or all of them when not ``take``) are kept for later requests."""
        probe = False
        if self.state != "closed":
            if self.state == "half-open" or self.clock() < self._down_until:
                return self._degraded(limits)  # open, or another request is the probe
            self.state, probe = "half-open", True
        turn = self._turn
        self.attempts += 1
        sent = self.clock()
        try:
            keys = [self.key(limit) for limit in limits]
            args: list[int] = [int(self.window * 1000)]
            for limit, want in zip(limits, wants, strict=True):
                args += (limit.max_requests, want)
            reply = await self._script(keys=keys, args=args)
        except Exception as exc:  # any Redis failure: connection, timeout, script error
            self._failed(exc, turn, probe)
            return self._degraded(limits)
        except BaseException:  # a cancelled probe must not leave the breaker half-open
            if probe and self._turn == turn:
                self.state = "open"
            raise
        if probe:
            log.info("rate limit Redis recovered")
            self.state, self._backoff, self._turn = "closed", self.retry_backoff, self._turn + 1
        if not int(reply[0]):
            limit = limits[int(reply[2]) - 1]
            refused = Decision(False, float(reply[1]) / 1000, limit, self.name)
            if self.lease > 1:  # the hint is the earliest it could allow: refuse here till then
                self._sweep(sent)
                self._refused[limit.key] = sent + refused.retry_after
            return refused
        if lease:
            self._keep(limits, [int(g) for g in reply[2:]], sent + int(reply[1]) / 1000, take)
        return _ALLOWED

    def _keep(self, limits: Sequence[Limit], grants: list[int], until: float, take: bool) -> None:
        """Add granted tokens to this process's leases (valid until Redis's window ends)."""
        now = self.clock()
        self._sweep(now)
        leases = self._leases
        for limit, granted in zip(limits, grants, strict=True):
            if take:
                granted -= 1  # this request's own token
            held = leases.get(limit.key)
            if held is not None and held[1] > now:  # still valid: the same Redis window
                held[0] += granted
                held[1] = min(held[1], until)
            elif granted > 0:
                leases[limit.key] = [float(granted), until, self.lease_size(limit) // 4]

    def _sweep(self, now: float) -> None:
        """Bounded memory: expired leases and refusals go once per window."""
        if now >= self._sweep_at:
            self._leases = {k: v for k, v in self._leases.items() if v[1] > now}
            self._refused = {k: v for k, v in self._refused.items() if v > now}
            self._sweep_at = now + self.window

    def _failed(self, exc: Exception, turn: int, probe: bool) -> None:
        if turn != self._turn:
            return  # began before the breaker moved: its failure is already accounted for
        self.failures += 1
        if probe:
            self._backoff = min(self._backoff * 2, self.max_backoff)
        else:
            log.warning("rate limit Redis unavailable (%r): degrading to %s", exc, self.fail_mode)
        self.state, self._turn = "open", self._turn + 1
        self._down_until = self.clock() + self._backoff

    def _degraded(self, limits: Sequence[Limit]) -> Decision:
        if self.fail_mode == "open":
            return Decision(True, backend="open")
        if self.fail_mode == "closed":
            return Decision(False, max(self._down_until - self.clock(), 0.001), None, "closed")
        return self.fallback.hit(limits)
