"""The event streams in Redis: what a verification's changes queue for its client's webhook,
their backlog, retries, failed events and replays (see :mod:`otpsvc.events`)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from otpsvc import metrics
from otpsvc.config import Settings
from otpsvc.core.models import Status, Verification
from otpsvc.core.views import verification_view
from otpsvc.errors import StoreUnavailable
from otpsvc.store.connection import STORE_ERRORS, RedisClient, per_node
from otpsvc.store.due import DueIndex, due_channel
from otpsvc.store.redis_store import EventOptions, script_source
from otpsvc.store.shards import event_keys, expiring_key, stream_key, tag_of, tags
from otpsvc.telemetry import TracedScript

log = logging.getLogger("otpsvc.events")

#: Redis being away, as redis-py raises it or as the store's guard wraps it.
OUTAGES: tuple[type[Exception], ...] = (*STORE_ERRORS, StoreUnavailable)

GROUP = "senders"
#: Deliveries in flight at once per API client, per worker.
PER_CLIENT = 4
#: How often a worker looks for events a dead worker left pending (one XPENDING a stream: the
#: largest part of an idle worker's cost). An orphan is taken over only after the webhook
#: timeouts anyway (about 14 s), so looking more often would gain little.
ORPHAN_SCAN_SECONDS = 10.0
#: How often a worker looks for verifications that expired pending.
EXPIRY_SCAN_SECONDS = 1.0
#: The longest wait between two tries of one event.
MAX_BACKOFF_SECONDS = 3600.0
#: How long a worker on a cluster waits between two rounds of reads that found nothing (a
#: blocking read cannot span slots).
CLUSTER_POLL_SECONDS = 0.2
#: The status an event's view shows whatever the snapshot says (it was taken before the expiry).
EVENT_STATUS = {
    "verification.expired": Status.EXPIRED,
    "verification.max_attempts_reached": Status.MAX_ATTEMPTS_REACHED,
}


@dataclass(frozen=True)
class EventSettings:
    webhooks: Mapping[str, str]
    secrets: Mapping[str, tuple[str, ...]]
    retry_base: float = 5.0
    retry_window: float = 86400.0
    #: Events older than this are dropped from the streams (they are past every retry).
    max_age: float = 172800.0
    connect_timeout: float = 3.05
    read_timeout: float = 10.0
    #: The check attempts a verification has (its view shows what is left).
    max_attempts: int = 5
    #: How long an event given up is kept for ``events failed`` and ``events replay``.
    failed_ttl: float = 14 * 86400.0
    #: With a price file, its currency: an event's verification shows what its sends cost.
    currency: str | None = None
    #: Whether the scripts count outcomes (for the funnel, ``OTPSVC_INSIGHTS_DAYS`` > 0, or
    #: the conversion rule, not ``off``).
    insights: bool = True

    @classmethod
    def from_settings(cls, settings: Settings) -> EventSettings:
        return cls(
            webhooks=settings.event_webhooks,
            secrets=settings.event_webhook_secrets,
            retry_base=settings.event_retry_base,
            retry_window=settings.event_retry_window,
            max_age=2.0 * settings.event_retry_window,
            max_attempts=settings.max_check_attempts,
            failed_ttl=settings.event_failed_days * 86400.0,
            currency=settings.currency if settings.prices else None,
            # The funnel and the conversion rule read the outcome entries.
            insights=settings.insights_days > 0
            or any(s.fraud_mode != "off" for s in (settings, *settings.client_settings.values())),
        )

    def options(self) -> EventOptions:
        """What the store's scripts need to write events."""
        return EventOptions(
            clients=tuple(self.webhooks),
            max_age_ms=int(self.max_age * 1000),
            outcomes=self.insights,
        )


def render(
    fields: Mapping[str, str], max_attempts: int, currency: str | None = None
) -> tuple[str, str, str, float]:
    """(webhook id, event type, body, queued at in epoch seconds) of a stream entry: one a
    script wrote (a snapshot of the record) or one queued again by ``events replay`` (its body)."""
    if "body" in fields:
        body = fields["body"]
        return fields["id"], json.loads(body).get("type", "unknown"), body, float(fields["queued"])
    event_type, at_ms = fields["type"], int(fields["at"])
    verification = Verification.from_record(
        fields["vid"],
        json.loads(fields["rec"]),
        max_attempts=max_attempts,
        now_ms=at_ms,
        status=EVENT_STATUS.get(event_type),
    )
    data = verification_view(verification, currency)
    if "x" in fields:
        # What the change itself says: an escalation's from, to and why; the conversion rule's
        # rule, channel and destination.
        data["fraud" if event_type.startswith("fraud.") else "escalation"] = json.loads(fields["x"])
    body = json.dumps({"type": event_type, "timestamp": _rfc3339(at_ms / 1000), "data": data})
    return fields["id"], event_type, body, at_ms / 1000


#: How often a worker says it is alive, and how long it counts as alive after.
WORKER_BEAT_SECONDS = 10.0
WORKER_ALIVE_MS = 30_000


class EventQueue:
    def __init__(self, client: RedisClient, prefix: str, settings: EventSettings) -> None:
        self.redis = client
        self.prefix = prefix
        self.settings = settings
        #: Events queued again by ``events replay`` (and those an earlier version queued here).
        self.replay_stream = f"{prefix}:{{{prefix}:events}}:stream"
        #: Every stream a worker reads: one per shard, then the replay stream.
        self.streams = [stream_key(prefix, tag) for tag in tags()] + [self.replay_stream]
        self.failed_key = f"{prefix}:{{{prefix}:events}}:failed"
        #: Events whose last try failed (``<entry id>@<stream>``), by the time their next try
        #: is due (ms): retries are found by due time, whatever else is pending.
        self.due_key = f"{prefix}:{{{prefix}:events}}:due"
        #: What the receiver answered to each event's last failed try (HTTP status or error).
        self.last_key = f"{prefix}:{{{prefix}:events}}:last"
        #: The event workers alive: each worker's name by when it was last seen (ms).
        self.workers_key = f"{prefix}:{{{prefix}:events}}:workers"
        self._expire = TracedScript("expire", client.register_script(script_source("expire")))
        #: The expiry watch's due index, made on the first look (workers only).
        self._expiry_due: DueIndex | None = None

    def beat(self, name: str, now: float) -> None:
        """Say that worker ``name`` is alive (every :data:`WORKER_BEAT_SECONDS`); the set
        expires when no worker is left to renew it, and forgets workers long gone."""
        now_ms = int(now * 1000)
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(self.workers_key, {name: now_ms})
        pipe.zremrangebyscore(self.workers_key, "-inf", now_ms - 10 * WORKER_ALIVE_MS)
        pipe.pexpire(self.workers_key, 10 * WORKER_ALIVE_MS)
        pipe.execute()

    def workers_alive(self, now: float) -> int:
        """Workers seen in the last :data:`WORKER_ALIVE_MS`."""
        now_ms = int(now * 1000)
        return int(self.redis.zcount(self.workers_key, now_ms - WORKER_ALIVE_MS, "+inf"))

    def wanted(self, client: str) -> bool:
        return client in self.settings.webhooks

    def each(self, keys: list[str], command: Callable[[Any, str], object]) -> dict[str, Any]:
        """``command(pipeline, key)`` for every key, pipelined per server (see ``per_node``)."""
        return per_node(self.redis, keys, command)

    def expire_due(self, now: float, limit: int = 50) -> int:
        """Tell every watched verification that expired while pending; each once, whichever
        worker gets it (the script's ZREM decides)."""
        now_ms = int(now * 1000)
        if self._expiry_due is None:
            shards = [expiring_key(self.prefix, tag) for tag in tags()]
            self._expiry_due = DueIndex(self.redis, shards, due_channel(self.prefix))
        shards = self._expiry_due.due(now_ms)
        if not shards:
            return 0
        due = self.each(shards, lambda pipe, key: pipe.zrangebyscore(key, "-inf", now_ms, 0, limit))
        told = 0
        for key in shards:
            answer = due[key]
            if isinstance(answer, Exception):
                raise answer
            for verification_id in answer:
                tag = tag_of(verification_id)
                record = f"{self.prefix}:{{{tag}}}:v:{verification_id}"
                told += int(
                    self._expire(
                        keys=[record, *event_keys(self.prefix, tag)],
                        args=[
                            verification_id,
                            now_ms,
                            self.settings.max_attempts,
                            *self.settings.options().args(),
                        ],
                    )
                )
        return told

    def add(self, message_id: str, client: str, body: str, queued: float | None = None) -> None:
        """Queue a rendered event in the replay stream; ``queued`` (epoch seconds) starts its
        retry window (default: now)."""
        at = time.time() if queued is None else queued
        oldest = f"{int((time.time() - self.settings.max_age) * 1000)}-0"
        self.redis.xadd(
            self.replay_stream,
            {"id": message_id, "client": client, "body": body, "queued": f"{at:.3f}"},
            minid=oldest,
            approximate=True,
        )

    def backlog(self, now: float) -> tuple[int, float]:
        """(events not yet delivered, age in seconds of the oldest one): delivered events are
        deleted from the streams, so what is left is waiting, new or pending."""
        lengths = self.each(self.streams, lambda pipe, key: pipe.xlen(key))
        firsts = self.each(self.streams, lambda pipe, key: pipe.xrange(key, "-", "+", count=1))
        waiting, oldest_ms = 0, None
        for key in self.streams:
            if isinstance(lengths[key], Exception) or isinstance(firsts[key], Exception):
                raise lengths[key] if isinstance(lengths[key], Exception) else firsts[key]
            waiting += int(lengths[key])
            if firsts[key]:
                queued_ms = int(str(firsts[key][0][0]).split("-", 1)[0])
                oldest_ms = queued_ms if oldest_ms is None else min(oldest_ms, queued_ms)
        if oldest_ms is None:
            return waiting, 0.0
        return waiting, max(0.0, now - oldest_ms / 1000)

    def trim(self) -> int:
        """Drop what the streams still hold of events that are done with: acknowledged
        (delivered, or given up and kept in ``events failed``) but left in the stream. An event
        still pending (in its retries, or waiting for a worker that knows its client) or not yet
        read is never trimmed: each stream is cut only below its oldest such entry, and a stream
        whose consumer group cannot be read is left alone. (A stream no worker reads is bounded
        by age, by every add.)"""
        pending = self.each(self.streams, lambda pipe, key: pipe.xpending(key, GROUP))
        groups = self.each(self.streams, lambda pipe, key: pipe.xinfo_groups(key))
        bounds = {key: _keep_from(pending.get(key), groups.get(key)) for key in self.streams}
        kept = [key for key in self.streams if bounds[key] is not None]
        answers = self.each(
            kept, lambda pipe, key: pipe.xtrim(key, minid=bounds[key], approximate=False)
        )
        trimmed = 0
        for answer in answers.values():
            if isinstance(answer, Exception):
                raise answer
            trimmed += int(answer)
        if trimmed:
            metrics.EVENTS_TRIMMED.inc(trimmed)
            log.info("dropped %d delivered events left in the streams", trimmed)
        return trimmed

    def done_with(self, stream: str, entry_id: str) -> None:
        """An event delivered or given up: acknowledged and deleted in one step (a worker killed
        between the two would leave an acknowledged entry in the stream), then its retry
        bookkeeping dropped."""
        name = f"{entry_id}@{stream}"
        transaction = self.redis.pipeline(transaction=True)
        transaction.xack(stream, GROUP, entry_id)
        transaction.xdel(stream, entry_id)
        transaction.execute()
        self.redis.zrem(self.due_key, name)
        self.redis.hdel(self.last_key, name)

    def retry_now(self, client: str | None = None) -> int:
        """Every event waiting for its next try (of ``client``, or every client's) made due
        now; how many."""
        r: Any = self.redis
        names = [str(name) for name in r.zrange(self.due_key, 0, -1)]
        if client is not None:
            names = [name for name in names if self._client_of(name) == client]
        if names:
            r.zadd(self.due_key, dict.fromkeys(names, 0), xx=True)
        return len(names)

    def _client_of(self, name: str) -> str | None:
        entry_id, _, stream = name.partition("@")
        r: Any = self.redis
        found = r.xrange(stream or self.replay_stream, entry_id, entry_id)
        return str(found[0][1].get("client")) if found else None

    def prune_failed(self, now: float) -> int:
        """Forget the events given up more than ``failed_ttl`` ago (they were kept for
        ``events failed`` and ``events replay``); how many."""
        cutoff = _rfc3339(now - self.settings.failed_ttl)
        r: Any = self.redis
        old = [
            message_id
            for message_id, raw in r.hscan_iter(self.failed_key, count=500)
            if json.loads(raw).get("failed_at", "") < cutoff
        ]
        if old:
            r.hdel(self.failed_key, *old)
            log.warning(
                "forgot %d failed events kept longer than %.0f days",
                len(old),
                self.settings.failed_ttl / 86400,
            )
        return len(old)

    def failed(self) -> dict[str, dict[str, Any]]:
        r: Any = self.redis
        return {str(k): json.loads(v) for k, v in r.hgetall(self.failed_key).items()}

    def replay(self, message_id: str) -> bool:
        """Queue a failed event again (same webhook-id); False when there is no such event."""
        raw = self.redis.hget(self.failed_key, message_id)
        if raw is None:
            return False
        event = json.loads(raw)
        self.add(message_id, event["client"], event["body"])
        self.redis.hdel(self.failed_key, message_id)
        return True


def _stream_id(text: str) -> tuple[int, int]:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _keep_from(pending: Any, groups: Any) -> str | None:
    """The lowest entry id a stream must keep: just after the last one the group read, or its
    oldest pending entry if that is older. None when the group cannot be read (keep it all)."""
    mine = [g for g in groups if g.get("name") == GROUP] if isinstance(groups, list) else []
    group = mine[0] if mine else None
    if group is None or not isinstance(pending, dict):
        return None
    ms, seq = _stream_id(str(group.get("last-delivered-id") or "0-0"))
    keep = (ms, seq + 1)
    if pending.get("pending") and pending.get("min"):
        keep = min(keep, _stream_id(str(pending["min"])))
    return f"{keep[0]}-{keep[1]}"


def _rfc3339(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _now_rfc3339() -> str:
    return _rfc3339(time.time())
