"""Waiting for a condition instead of sleeping for a fixed time.

A test that sleeps "long enough" for something to happen is slow, or flaky on a slower machine.
These helpers poll a condition until it holds, with a generous bound only a real failure reaches.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

#: long enough for a 3x slower, busy machine; only reached when the condition never holds
BOUND = 10.0


async def eventually(
    condition: Callable[[], Any], timeout: float = BOUND, interval: float = 0.005
) -> None:
    """Return as soon as ``condition()`` is truthy; fail with its last value after ``timeout``."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        value = condition()
        if value:
            return
        if loop.time() > end:
            raise AssertionError(f"condition not met within {timeout} s (last value {value!r})")
        await asyncio.sleep(interval)


def eventually_sync(
    condition: Callable[[], Any], timeout: float = BOUND, interval: float = 0.005
) -> None:
    """``eventually`` for plain (non-async) tests and helper threads."""
    end = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return
        if time.monotonic() > end:
            raise AssertionError(f"condition not met within {timeout} s (last value {value!r})")
        time.sleep(interval)
