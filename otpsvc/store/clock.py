"""One clock for every worker: the local clock, corrected to the Redis server's (``TIME``).

Every time-based decision (code expiry, cooldowns, sliding windows of the limits) is taken with
times the service passes to its Lua scripts. Workers on several hosts with skewed clocks would
disagree about a window, and one running behind could make old calls fall out of it early. So each
worker measures its offset to the Redis server's clock, and keeps it fresh, at the cost of one
``TIME`` a minute.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import redis

from otpsvc.store.connection import RedisClient

REFRESH_SECONDS = 60.0


class RedisClock:
    def __init__(
        self,
        client: RedisClient,
        *,
        local: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.local = local
        self.monotonic = monotonic
        self.offset = 0.0
        self._next_refresh = 0.0
        self._lock = threading.Lock()

    def refresh(self) -> None:
        """Measure the offset to Redis, halfway through the round trip."""
        before = self.local()
        seconds, micros = self.client.time()
        after = self.local()
        self.offset = seconds + micros / 1e6 - (before + after) / 2

    def __call__(self) -> float:
        now = self.monotonic()
        if now >= self._next_refresh and self._lock.acquire(blocking=False):
            try:
                self._next_refresh = now + REFRESH_SECONDS
                self.refresh()
            except redis.RedisError:
                # Keep the last offset; the request meets the outage in the store itself.
                self._next_refresh = now + 1.0
            finally:
                self._lock.release()
        return self.local() + self.offset
