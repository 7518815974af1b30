"""Which event shards have something due, without asking every shard on every turn.

Each of the 256 event shards keeps two sorted sets scored by when their entries fall due (ms):
the verifications whose expiry is watched and the escalation steps to come. An event worker
used to ask all 256 of each on every turn of its loop, a few hundred Redis commands a second
per idle worker. A :class:`DueIndex` instead keeps, in the worker, the earliest due time of each
shard: the scripts that file an entry say so on the channel ``<prefix>:due`` (``_events.lua``,
``ev_due``), the index reads what was said between two turns, and only a shard whose earliest
entry is due is asked. Every ``full_every`` seconds (and after the channel's connection was
lost) every shard's earliest entry is read again, so a lost message costs a delay, never an
entry.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

from otpsvc.store.connection import STORE_ERRORS, RedisClient, per_node

log = logging.getLogger("otpsvc.store")

#: How often every shard's earliest entry is read again whatever the channel said.
FULL_EVERY_SECONDS = 30.0


def due_channel(prefix: str) -> str:
    """The channel the scripts announce due entries on (``ev_due`` in ``_events.lua``)."""
    return f"{prefix}:due"


class DueIndex:
    """The earliest due time of each of ``keys`` (sorted sets scored in ms)."""

    def __init__(
        self,
        client: RedisClient,
        keys: Sequence[str],
        channel: str,
        *,
        full_every: float = FULL_EVERY_SECONDS,
    ) -> None:
        self.redis: Any = client
        self.keys = list(keys)
        self.channel = channel
        self.full_every = full_every
        self._earliest: dict[str, float] = {}
        self._wanted = set(self.keys)
        self._full_at = float("-inf")
        self._pubsub: Any = None
        #: The keys last found due: their entries have been taken (or claimed, which files them
        #: later) since, so their earliest is read again on the next turn.
        self._taken: list[str] = []

    def due(self, now_ms: int) -> list[str]:
        """The keys whose earliest entry is due at ``now_ms``."""
        self._listen()
        if time.monotonic() >= self._full_at:
            self.refresh(self.keys)
            self._full_at = time.monotonic() + self.full_every
        else:
            self.refresh(self._taken)
        self._taken = [key for key in self.keys if self._earliest.get(key, math.inf) <= now_ms]
        return self._taken

    def refresh(self, keys: Sequence[str]) -> None:
        """Read the earliest entry of each of ``keys`` again (one pipeline per server)."""
        if not keys:
            return
        answers = per_node(
            self.redis, list(keys), lambda pipe, key: pipe.zrange(key, 0, 0, withscores=True)
        )
        for key, answer in answers.items():
            if isinstance(answer, Exception):
                raise answer
            self._earliest[key] = float(answer[0][1]) if answer else math.inf

    def close(self) -> None:
        if self._pubsub is not None:
            self._pubsub.close()
            self._pubsub = None

    def _listen(self) -> None:
        """Take in what the channel said since the last turn. Subscribed before the first full
        read, so nothing filed after that read goes unheard; a lost connection is made again,
        with a full read, since what was said meanwhile is lost."""
        try:
            if self._pubsub is None:
                self._pubsub = self.redis.pubsub()
                self._pubsub.subscribe(self.channel)
                self._full_at = float("-inf")
            # Read until nothing is waiting (the subscription's own confirmation comes first).
            while (message := self._pubsub.get_message(timeout=0)) is not None:
                if message.get("type") == "message":
                    self._note(message.get("data"))
        except STORE_ERRORS:
            self.close()
            self._full_at = float("-inf")
            raise

    def _note(self, data: object) -> None:
        key, _, at = str(data).rpartition(" ")
        if key in self._wanted and at.isdigit():
            self._earliest[key] = min(self._earliest.get(key, math.inf), float(at))
