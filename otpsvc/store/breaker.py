"""Circuit-breaker state of each provider, in Redis so that every worker sees the same.

Keys (per provider, one hash tag): ``<prefix>:{cb:<name>}:f`` failures in the current window,
``:open`` open-until time (ms), ``:t`` tripped recently (a failure right after the cool-off
reopens at once).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from importlib import resources

from otpsvc.store.connection import RedisClient, store_guard
from otpsvc.telemetry import TracedScript

#: How long a worker trusts its last read of the open markers.
CACHE_SECONDS = 1.0


class BreakerStore:
    def __init__(
        self,
        client: RedisClient,
        prefix: str,
        *,
        threshold: int,
        window_ms: int,
        cooloff_ms: int,
    ) -> None:
        self.redis = client
        self.prefix = prefix
        self.threshold = threshold
        self.window_ms = window_ms
        self.cooloff_ms = cooloff_ms
        script = resources.files("otpsvc.store").joinpath("scripts", "breaker_failure.lua")
        self._failure = TracedScript("breaker_failure", client.register_script(script.read_text()))
        self._cache: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()
        #: How old a cached breaker state may be, seconds.
        self.cache_seconds = CACHE_SECONDS

    def _key(self, name: str, part: str) -> str:
        return f"{self.prefix}:{{cb:{name}}}:{part}"

    def open_until(self, names: Iterable[str]) -> dict[str, int]:
        """Each provider's open-until time in ms (0 when closed), at most a second old."""
        names = list(names)
        fresh = time.monotonic() - self.cache_seconds
        with self._lock:
            # A provider never read is missing whatever the clock says: the monotonic clock
            # starts near the host's boot, so "read at 0.0" can look fresh on a young host.
            missing = [n for n in names if n not in self._cache or self._cache[n][1] < fresh]
        if missing:
            with store_guard():
                pipe = self.redis.pipeline(transaction=False)
                for name in missing:
                    pipe.get(self._key(name, "open"))
                values = pipe.execute()
            with self._lock:
                for name, value in zip(missing, values, strict=True):
                    self._cache[name] = (int(value or 0), time.monotonic())
        with self._lock:
            return {n: self._cache[n][0] for n in names}

    def record_failure(self, name: str, now_ms: int) -> int:
        """Count a failure; the open-until time when this opened the circuit, else 0."""
        keys = [self._key(name, "f"), self._key(name, "open"), self._key(name, "t")]
        with store_guard():
            until = int(
                self._failure(
                    keys=keys, args=[self.window_ms, self.threshold, self.cooloff_ms, now_ms]
                )
            )
        if until:
            with self._lock:
                self._cache[name] = (until, time.monotonic())
        return until
