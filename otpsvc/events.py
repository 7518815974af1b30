"""Events to the app: signed Standard Webhooks, written with the change they report, sent by
workers.

Each API client may have one webhook URL (``OTPSVC_EVENT_WEBHOOKS``) and its signing secrets
(``OTPSVC_EVENT_WEBHOOK_SECRETS``, ``whsec_...``). An event is written by the Lua script that
makes the change it reports, in the same atomic step (``store/scripts/_events.lua``): into the
stream of the verification's event shard, which lives in the verification's own hash slot (one
of :data:`~otpsvc.store.shards.SHARDS`; see :mod:`otpsvc.store.shards`). A committed approval
always has its event, whatever process dies when; an event never tells of a change that did not
happen. The event holds a snapshot of the record (never the code's verifier); the worker renders
the body from it, the same on every try.

Workers (``otpsvc worker``; several may run, each a consumer of the ``senders`` group of every
shard) deliver them, in a pool of threads per API client so that one client's slow receiver
never delays another's events: a 2xx answer acknowledges an event; any other answer, a timeout
or a refused connection leaves it pending with its next try's due time in a sorted set (back-off
exponential from ``OTPSVC_EVENT_RETRY_BASE`` seconds, capped at an hour, with jitter), from which
whichever worker is alive takes it when it is due. An event left pending by a worker that died
is taken over once it has sat longer than any delivery can take. Past
``OTPSVC_EVENT_RETRY_WINDOW`` (24 hours) an event is kept as failed: ``otpsvc events failed``
lists those, ``otpsvc events replay ID`` queues one again (into the replay stream, which the
workers read as one more shard).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import redis
import requests
from standardwebhooks import Webhook

from otpsvc import metrics
from otpsvc.config import Settings
from otpsvc.core.models import Status, Verification
from otpsvc.core.views import verification_view
from otpsvc.errors import StoreUnavailable
from otpsvc.store.connection import STORE_ERRORS, RedisClient, is_cluster, per_node
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
        )

    def options(self) -> EventOptions:
        """What the store's scripts need to write events."""
        return EventOptions(clients=tuple(self.webhooks), max_age_ms=int(self.max_age * 1000))


def render(fields: Mapping[str, str], max_attempts: int) -> tuple[str, str, str, float]:
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
    data = verification_view(verification)
    if "x" in fields:
        # What the change itself says: an escalation's from, to and why.
        data["escalation"] = json.loads(fields["x"])
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


def block_ms_for(socket_timeout: float) -> int:
    """How long a worker's ``XREADGROUP`` may block: half the Redis socket timeout. A block as
    long as the timeout ends in a client-side timeout on every idle read (and a read the server
    answered after the client gave up leaves its events pending until they are claimed)."""
    return max(50, int(socket_timeout * 1000 / 2))


class EventWorker:
    """One consumer of the ``senders`` group of every stream; :meth:`run` until :meth:`stop`.

    An event is named ``<entry id>@<stream>`` in the due index and while in flight."""

    def __init__(
        self,
        queue: EventQueue,
        name: str | None = None,
        per_client: int = PER_CLIENT,
        guard: Callable[[], None] | None = None,
        periodic: Sequence[Callable[[], object]] = (),
    ) -> None:
        self.queue = queue
        #: Run on every loop while Redis answers, after the guard (the escalation steps due).
        self.periodic = tuple(periodic)
        #: Run on every loop while Redis answers (the kill switch's guard against a Redis that
        #: lost its data).
        self.guard = guard
        self.name = name or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self.session = requests.Session()
        self.session.trust_env = False
        self._stop = threading.Event()
        #: Deliveries run in a pool of ``per_client`` threads per API client: one client's
        #: hanging or failing receiver holds its own threads, never another client's events.
        self.per_client = per_client
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self._in_flight: set[str] = set()
        self._lock = threading.Lock()
        self._heartbeat: Path | None = None
        self._next_orphan_scan = 0.0
        self._next_expiry_scan = 0.0
        self._next_beat = 0.0

    def stop(self) -> None:
        self._stop.set()

    def drain(self, timeout: float = 30.0) -> None:
        """Wait until the deliveries in flight are done (tests; a stopping worker)."""
        deadline = time.monotonic() + timeout
        while self._in_flight and time.monotonic() < deadline:
            time.sleep(0.01)

    def _submit(self, stream: str, entry_id: str, fields: Mapping[str, str], tries: int) -> bool:
        """Hand one delivery to its client's pool; False when it is already in flight here."""
        client = fields.get("client", "")
        name = f"{entry_id}@{stream}"
        with self._lock:
            if name in self._in_flight:
                return False
            self._in_flight.add(name)
            pool = self._pools.get(client)
            if pool is None:
                pool = ThreadPoolExecutor(self.per_client, thread_name_prefix="deliver")
                self._pools[client] = pool
        pool.submit(self._deliver_and_beat, stream, entry_id, dict(fields), tries)
        return True

    def _deliver_and_beat(
        self, stream: str, entry_id: str, fields: Mapping[str, str], tries: int
    ) -> None:
        try:
            self.deliver(stream, entry_id, fields, tries)
        except OUTAGES as exc:
            # The event stays pending: the orphan scan (or another worker) tries it again.
            log.warning("event worker: redis unavailable: %s", type(exc).__name__)
        except Exception:
            log.exception("event worker: delivery of %s failed", fields.get("id", "?"))
        finally:
            with self._lock:
                self._in_flight.discard(f"{entry_id}@{stream}")
            if self._heartbeat is not None:
                self._heartbeat.touch()

    def ensure_group(self) -> None:
        """The ``senders`` group on every stream (each stream made when missing)."""
        answers = self.queue.each(
            self.queue.streams,
            lambda pipe, key: pipe.xgroup_create(key, GROUP, id="0", mkstream=True),
        )
        for answer in answers.values():
            if isinstance(answer, Exception) and "BUSYGROUP" not in str(answer):
                raise answer

    def _ensure_group_when_up(self) -> None:
        try:
            self.ensure_group()
        except OUTAGES as exc:
            log.warning("event worker: redis unavailable: %s", type(exc).__name__)
            self._stop.wait(1.0)

    def backoff(self, entry_id: str, tries: int) -> float:
        """Seconds an event waits after its ``tries``-th try: exponential, capped, with a
        jitter of -50 %..0 fixed per event and try (workers agree on it without talking)."""
        base = min(MAX_BACKOFF_SECONDS, self.queue.settings.retry_base * 2 ** max(0, tries - 1))
        digest = hashlib.sha256(f"{entry_id}:{tries}".encode()).digest()
        return float(base * (0.5 + digest[0] / 512))

    def run(self, block_ms: int = 1000, heartbeat: Path | None = None) -> None:
        """Deliver until stopped. ``heartbeat`` is touched after every step that reached Redis
        (at least once per ``block_ms``): a liveness probe can tell a stuck worker by its age.
        Once a minute, events older than the streams' age bound are trimmed."""
        self._heartbeat = heartbeat
        self._ensure_group_when_up()
        next_trim = 0.0
        while not self._stop.is_set():
            try:
                if time.monotonic() >= next_trim:
                    self.queue.trim()
                    self.queue.prune_failed(time.time())
                    next_trim = time.monotonic() + 60
                if time.monotonic() >= self._next_beat:
                    self.queue.beat(self.name, time.time())
                    self._next_beat = time.monotonic() + WORKER_BEAT_SECONDS
                if self.guard is not None:
                    self.guard()
                for task in self.periodic:
                    task()
                self.step(block_ms)
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                # Redis came back empty (a restart without persistence) or a replica without
                # the group took over: make the streams and the group again and go on.
                log.warning(
                    "event worker: the consumer group %s is gone (Redis restarted empty or "
                    "failed over); created it again",
                    GROUP,
                )
                self._ensure_group_when_up()
                continue
            except OUTAGES as exc:
                # Wherever in the loop Redis went away (the guard, the ladder, a read), the
                # worker waits and goes on: its whole job is to carry on.
                cause = exc.__cause__ if isinstance(exc, StoreUnavailable) else exc
                log.warning("event worker: redis unavailable: %s", type(cause).__name__)
                # Said alive again as soon as Redis answers (it may have come back empty).
                self._next_beat = 0.0
                self._stop.wait(1.0)
                continue
            if heartbeat is not None:
                heartbeat.touch()
        for pool in self._pools.values():
            pool.shutdown(wait=True, cancel_futures=True)

    def step(self, block_ms: int = 1000) -> int:
        """Hand what is due to the delivery pools: retries whose time has come (by due time),
        now and then events left pending by a worker that died, then new events; how many
        deliveries were handed over. Verifications that expired pending are told first."""
        if time.monotonic() >= self._next_expiry_scan:
            self.queue.expire_due(time.time())
            self._next_expiry_scan = time.monotonic() + EXPIRY_SCAN_SECONDS
        handed = 0
        # redis-py's reply types are unions of every encoding; these replies are decoded text.
        r: Any = self.queue.redis
        due = self.queue.due_key
        for name in r.zrangebyscore(due, "-inf", int(time.time() * 1000), 0, 100):
            if name in self._in_flight or not r.zrem(due, name):
                continue  # here already, or another worker took it
            # otpsvc 0.1 named a retry by its entry id alone, in the one stream it had.
            entry_id, _, stream = name.partition("@")
            handed += self._claim_and_submit(stream or self.queue.replay_stream, entry_id)
        if time.monotonic() >= self._next_orphan_scan:
            handed += self._claim_orphans()
            self._next_orphan_scan = time.monotonic() + ORPHAN_SCAN_SECONDS
        for stream, entries in self._read(block_ms):
            for entry_id, fields in entries:
                handed += self._submit(stream, entry_id, fields, 1)
        return handed

    def _read(self, block_ms: int) -> list[tuple[str, list[tuple[str, dict[str, str]]]]]:
        """New events of every stream: one blocking read on one server; on a cluster (where a
        read cannot span slots) one read per stream, pipelined per node, then a short wait
        when none had any."""
        queue = self.queue
        r: Any = queue.redis
        if not is_cluster(r):
            streams = dict.fromkeys(queue.streams, ">")
            return list(r.xreadgroup(GROUP, self.name, streams, count=10, block=block_ms) or [])
        answers = queue.each(
            queue.streams,
            lambda pipe, key: pipe.xreadgroup(GROUP, self.name, {key: ">"}, count=10),
        )
        found: list[tuple[str, list[tuple[str, dict[str, str]]]]] = []
        for answer in answers.values():
            if isinstance(answer, Exception):
                raise answer
            found.extend(answer or [])
        if not found:
            self._stop.wait(min(block_ms / 1000, CLUSTER_POLL_SECONDS))
        return found

    def _claim_and_submit(self, stream: str, entry_id: str, tries: int | None = None) -> int:
        r: Any = self.queue.redis
        if tries is None:
            pending = r.xpending_range(stream, GROUP, entry_id, entry_id, 1)
            if not pending:
                return 0
            tries = int(pending[0]["times_delivered"]) + 1
        for claimed_id, fields in r.xclaim(stream, GROUP, self.name, 0, [entry_id]):
            if fields:
                return int(self._submit(stream, claimed_id, fields, tries))
            # Trimmed from the stream while pending: nothing is left to deliver.
            r.xack(stream, GROUP, claimed_id)
        return 0

    def _claim_orphans(self) -> int:
        """Events pending with no due time for longer than their back-off and a grace: the
        worker that held them died between reading and scheduling them."""
        queue = self.queue
        settings = queue.settings
        r: Any = queue.redis
        # Longer than any delivery can take, so a live worker's delivery is never taken over.
        grace = settings.connect_timeout + settings.read_timeout + 1
        handed = 0
        pending = queue.each(
            queue.streams, lambda pipe, key: pipe.xpending_range(key, GROUP, "-", "+", 100)
        )
        for stream, entries in pending.items():
            if isinstance(entries, Exception):
                raise entries
            for entry in entries:
                entry_id, tries = entry["message_id"], int(entry["times_delivered"])
                wait_ms = (self.backoff(entry_id, tries) + grace) * 1000
                if (
                    f"{entry_id}@{stream}" in self._in_flight
                    or entry["time_since_delivered"] < wait_ms
                ):
                    continue
                if r.zscore(queue.due_key, f"{entry_id}@{stream}") is not None:
                    continue
                handed += self._claim_and_submit(stream, entry_id, tries + 1)
        return handed

    def deliver(
        self, stream: str, entry_id: str, fields: Mapping[str, str], tries: int = 1
    ) -> None:
        """One try (the ``tries``-th) of one event; a failed one is logged with what the
        receiver answered and when the next try comes, never with the payload."""
        queue, settings = self.queue, self.queue.settings
        client = fields["client"]
        message_id, event_type, body, queued = render(fields, settings.max_attempts)
        name = f"{entry_id}@{stream}"
        url = settings.webhooks.get(client)
        secrets = settings.secrets.get(client)
        if time.time() - queued > settings.retry_window:
            self._give_up(stream, entry_id, message_id, client, body, event_type)
            return
        if url is None or not secrets:
            # The API wrote it, so the client has a webhook there: this worker's settings are
            # older or newer (a rollout, a HUP not yet sent). It stays pending for a worker that
            # knows the client, or for this one after its reload; never given up at once.
            self._retry(name, tries, "no webhook for this client in this worker's settings")
            log.warning(
                "event %s (%s) for %s: this worker has no webhook for the client; left pending",
                message_id,
                event_type,
                client,
            )
            return
        sent_at = datetime.now(UTC)
        headers = {
            "content-type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(int(sent_at.timestamp())),
            # Signed with every secret of the client: Standard Webhooks lists several "v1,"
            # signatures in one header, so a receiver holding either secret verifies it.
            "webhook-signature": " ".join(
                Webhook(secret).sign(message_id, sent_at, body) for secret in secrets
            ),
            "user-agent": "otpsvc",
        }
        began = time.perf_counter()
        try:
            response = self.session.post(
                url,
                data=body.encode(),
                headers=headers,
                timeout=(settings.connect_timeout, settings.read_timeout),
                allow_redirects=False,
            )
            accepted = 200 <= response.status_code < 300
            answer = f"HTTP {response.status_code}"
        except requests.RequestException as exc:
            accepted = False
            answer = type(exc).__name__
        metrics.EVENT_DELIVERY_SECONDS.labels(client).observe(time.perf_counter() - began)
        if accepted:
            queue.done_with(stream, entry_id)
            metrics.EVENTS.labels(event_type, "delivered").inc()
            metrics.EVENT_DELIVERIES.labels(client, event_type, "delivered").inc()
        else:
            metrics.EVENTS.labels(event_type, "retry").inc()
            metrics.EVENT_DELIVERIES.labels(client, event_type, "retry").inc()
            next_try = self._retry(name, tries, answer)
            log.warning(
                "event %s (%s) for %s: try %d failed (%s); next try in about %.0f s",
                message_id,
                event_type,
                client,
                tries,
                answer,
                next_try,
            )

    def _retry(self, name: str, tries: int, answer: str) -> float:
        """Make the event due again after its backoff, with what this try got; the seconds."""
        queue = self.queue
        next_try = self.backoff(name.partition("@")[0], tries)
        queue.redis.zadd(queue.due_key, {name: int((time.time() + next_try) * 1000)})
        queue.redis.hset(queue.last_key, name, answer)
        return next_try

    def _give_up(
        self, stream: str, entry_id: str, message_id: str, client: str, body: str, event_type: str
    ) -> None:
        queue = self.queue
        name = f"{entry_id}@{stream}"
        last = queue.redis.hget(queue.last_key, name)
        record = {
            "client": client,
            "body": body,
            "failed_at": _now_rfc3339(),
            "last_answer": str(last) if last else "never tried",
        }
        queue.redis.hset(queue.failed_key, message_id, json.dumps(record))
        queue.done_with(stream, entry_id)
        metrics.EVENTS.labels(event_type, "failed").inc()
        metrics.EVENT_DELIVERIES.labels(client, event_type, "failed").inc()
        log.warning("event %s (%s) for %s kept as failed", message_id, event_type, client)


def serve_worker_metrics(
    port: int,
    backlog: Callable[[], tuple[int, float]],
    *,
    host: str = "0.0.0.0",  # noqa: S104 - a scrape target: Prometheus reaches the pod's address
    token: str | None = None,
) -> None:
    """The worker's ``GET /metrics`` on ``host:port``, in a thread of its own: its delivery
    counters and latency, and the stream's backlog read at scrape time. With ``token`` (the
    API's ``OTPSVC_METRICS_TOKEN``) a scrape needs ``Authorization: Bearer <token>``."""
    collector = metrics.BacklogCollector(backlog)
    expected = f"Bearer {token}".encode() if token else None

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != "/metrics":
                self.send_error(404)
                return
            presented = self.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
            if expected is not None and not hmac.compare_digest(expected, presented):
                self.send_error(401)
                return
            text, content_type = metrics.exposition(collector)
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True, name="metrics").start()
    log.info("worker metrics on %s:%d%s", host, port, " (token required)" if token else "")
