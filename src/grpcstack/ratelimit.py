"""Rate limiters: a sliding-window counter, in process or in Redis.

The sliding-window counter keeps one counter per fixed window and weighs the previous window by
the part of it still inside the sliding window: ``previous * (1 - elapsed) + current``. Unlike a
fixed window it does not let 2x the limit through at a window boundary, and it costs two integers
per key. Several limits (per user, global) are checked together and counted only when all allow.

``RedisLimiter`` runs the same arithmetic in ONE Lua script per request (all limits, Redis's own
clock), so every process sharing the Redis enforces one limit. The script touches only the keys
it is passed (one hash per limit), all under the limiter's ``{hash tag}``: one slot, so it runs
on Redis Cluster too (the price: one node holds every counter of a limiter).

When Redis fails it degrades to the in-process limiter (or fails open/closed, as configured)
behind a circuit breaker: one failure per state counts (a burst of concurrent failures is one
failure, not a jump to the longest backoff); when the backoff ends, ONE request probes Redis
while the others stay degraded; the probe's outcome closes the breaker or doubles the backoff.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

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
        return Decision(True, backend=self.name)


# KEYS: one hash per limit {w: window index, p: previous count, c: current count};
# ARGV: window in ms, then one max per limit.
_LUA = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local window = tonumber(ARGV[1])
local index = math.floor(now / window)
local elapsed = (now - index * window) / window
local counts = {}
local worst, worst_i = -1, 0
for i = 1, #KEYS do
  local limit = tonumber(ARGV[i + 1])
  local h = redis.call('HMGET', KEYS[i], 'w', 'p', 'c')
  local w = tonumber(h[1])
  local prev, cur = 0, 0
  if w == index then
    prev, cur = tonumber(h[2]) or 0, tonumber(h[3]) or 0
  elseif w == index - 1 then
    prev = tonumber(h[3]) or 0
  end
  counts[i] = {prev, cur}
  if prev * (1 - elapsed) + cur + 1 > limit then
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
for i = 1, #KEYS do
  redis.call('HSET', KEYS[i], 'w', index, 'p', counts[i][1], 'c', counts[i][2] + 1)
  redis.call('PEXPIRE', KEYS[i], window * 2 + 1000)
end
return {1, '0', 0}
"""

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
    ) -> None:
        self.redis = redis
        self.window = window
        self.prefix = prefix
        self.fail_mode = fail_mode
        self.fallback = MemoryLimiter(window, clock)
        self.clock = clock
        self.retry_backoff = retry_backoff
        self.max_backoff = max_backoff
        self._script: Any = redis.register_script(_LUA)
        self.state: BreakerState = "closed"
        self._down_until = 0.0
        self._backoff = retry_backoff
        self._turn = 0  # bumped on every state change: only attempts of the current turn count
        self.failures = 0  # failures that counted (at most one per turn)
        self.attempts = 0  # script calls sent to Redis

    @property
    def degraded(self) -> bool:
        return self.state != "closed"

    def key(self, limit: Limit) -> str:
        return f"{{{self.prefix}}}:{limit.key}"

    async def hit(self, limits: Sequence[Limit]) -> Decision:
        probe = False
        if self.state != "closed":
            if self.state == "half-open" or self.clock() < self._down_until:
                return self._degraded(limits)  # open, or another request is the probe
            self.state, probe = "half-open", True
        turn = self._turn
        self.attempts += 1
        try:
            keys = [self.key(limit) for limit in limits]
            args = [int(self.window * 1000), *(limit.max_requests for limit in limits)]
            allowed, wait_ms, which = await self._script(keys=keys, args=args)
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
        if int(allowed):
            return Decision(True, backend=self.name)
        return Decision(False, float(wait_ms) / 1000, limits[int(which) - 1], self.name)

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
