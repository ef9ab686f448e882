"""Cross-process invalidation: publish on the shared pool, listen on a connection of its own.

The listener's connection has no socket timeout (an idle subscription is not an error: with the
pool's 1 s timeout redis-py < 8.1 dropped it every second, redis/redis-py#4098) but TCP
keepalive. Every (re)subscription Redis confirms calls ``on_subscribed`` so the owner can make up
for messages missed while it was not subscribed: also one redis-py's retry made without raising.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("grpcstack.cache")


class InvalidationListener:
    def __init__(
        self,
        publisher: Any,
        subscriber: Any,
        channel: str,
        instance_id: str,
        on_message: Callable[[dict[str, Any]], None],
        on_subscribed: Callable[[], Awaitable[None]],
        *,
        owns_subscriber: bool = True,
        retry_seconds: float = 1.0,
    ) -> None:
        self.publisher = publisher  # the shared pool's client
        self.subscriber = subscriber  # a client of its own, closed with the listener
        self.owns_subscriber = owns_subscriber
        self.channel = channel
        self.instance_id = instance_id
        self.on_message = on_message
        self.on_subscribed = on_subscribed
        self.retry_seconds = retry_seconds
        self.subscriptions = 0  # successful (re)subscriptions
        self.failures = 0
        self.listening = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def publish(self, **message: Any) -> None:
        data = json.dumps({"src": self.instance_id, **message})
        try:
            await self.publisher.publish(self.channel, data)
        except Exception as exc:  # peers catch up on their next reconnect or by TTL
            log.warning("cache invalidation broadcast failed: %r", exc)

    async def start(self, wait: float = 2.0) -> None:
        if self._task is not None:
            return
        self._task = asyncio.get_running_loop().create_task(self._listen())
        try:
            async with asyncio.timeout(wait):
                await self.listening.wait()
        except TimeoutError:
            log.warning("cache invalidation channel not subscribed yet; retrying in background")

    async def _listen(self) -> None:
        while True:
            pubsub = self.subscriber.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                async for message in pubsub.listen():
                    if message["type"] == "subscribe":
                        # Redis confirmed: at first, and after every reconnect redis-py made by
                        # itself (its retry resubscribes without telling): make up the gap now
                        await self.on_subscribed()
                        self.subscriptions += 1
                        self.listening.set()
                    elif message["type"] == "message":
                        data = json.loads(message["data"])
                        if data.get("src") != self.instance_id:
                            self.on_message(data)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                self.listening.clear()
                log.warning("cache invalidation listener failed (%r); resubscribing", exc)
                await asyncio.sleep(self.retry_seconds)
            finally:
                try:
                    await pubsub.aclose()
                except Exception:
                    pass

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if not self.owns_subscriber:
            return
        try:
            await self.subscriber.aclose()
        except Exception:
            log.debug("closing the cache listener's client failed", exc_info=True)
