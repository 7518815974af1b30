"""Events to the app: signed Standard Webhooks, queued in a Redis stream, sent by workers.

Each API client may have one webhook URL (``OTPSVC_EVENT_WEBHOOKS``) and its signing secret
(``OTPSVC_EVENT_WEBHOOK_SECRETS``, ``whsec_...``). Events are added to one Redis stream
(``<prefix>:{<prefix>:events}:stream``) right after the state change they report: the change
happens in the number's slot and the stream lives in its own, so on a cluster the two cannot be
one atomic step, and a process that dies between them loses that event (it is logged as lost
when Redis refuses it).

Workers (``otpsvc worker``; several may run, each a consumer of the ``senders`` group) deliver
them, in a pool of threads per API client so that one client's slow receiver never delays
another's events: a 2xx answer acknowledges an event; any other answer, a timeout or a refused
connection leaves it pending with its next try's due time in a sorted set (back-off exponential
from ``OTPSVC_EVENT_RETRY_BASE`` seconds, capped at an hour, with jitter), from which whichever
worker is alive takes it when it is due. An event left pending by a worker that died is taken
over once it has sat longer than any delivery can take. Past ``OTPSVC_EVENT_RETRY_WINDOW``
(24 hours) an event is kept as failed: ``otpsvc events failed`` lists those, ``otpsvc events
replay ID`` queues one again. A worker killed in the middle of a delivery loses nothing: its
pending event is claimed by the next worker.
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
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
from otpsvc.store.connection import STORE_ERRORS, RedisClient

log = logging.getLogger("otpsvc.events")

GROUP = "senders"
#: Deliveries in flight at once per API client, per worker.
PER_CLIENT = 4
#: How often a worker looks for events a dead worker left pending.
ORPHAN_SCAN_SECONDS = 5.0
#: The longest wait between two tries of one event.
MAX_BACKOFF_SECONDS = 3600.0


@dataclass(frozen=True)
class EventSettings:
    webhooks: Mapping[str, str]
    secrets: Mapping[str, tuple[str, ...]]
    retry_base: float = 5.0
    retry_window: float = 86400.0
    #: Events older than this are dropped from the stream (they are past every retry).
    max_age: float = 172800.0
    connect_timeout: float = 3.05
    read_timeout: float = 10.0

    @classmethod
    def from_settings(cls, settings: Settings) -> EventSettings:
        return cls(
            webhooks=settings.event_webhooks,
            secrets=settings.event_webhook_secrets,
            retry_base=settings.event_retry_base,
            retry_window=settings.event_retry_window,
            max_age=2.0 * settings.event_retry_window,
        )


class EventQueue:
    def __init__(self, client: RedisClient, prefix: str, settings: EventSettings) -> None:
        self.redis = client
        self.settings = settings
        self.stream = f"{prefix}:{{{prefix}:events}}:stream"
        self.failed_key = f"{prefix}:{{{prefix}:events}}:failed"
        #: Events whose last try failed, by the time their next try is due (ms): retries are
        #: found by due time, whatever else is pending.
        self.due_key = f"{prefix}:{{{prefix}:events}}:due"
        #: What the receiver answered to each event's last failed try (HTTP status or error).
        self.last_key = f"{prefix}:{{{prefix}:events}}:last"
        #: Pending verifications of clients with a webhook, by expiry time, for
        #: ``verification.expired``; their last view in ``pending_key``.
        self.expiring_key = f"{prefix}:{{{prefix}:events}}:expiring"
        self.pending_key = f"{prefix}:{{{prefix}:events}}:pending"

    def wanted(self, client: str) -> bool:
        return client in self.settings.webhooks

    def emit(self, client: str, event_type: str, data: Mapping[str, Any]) -> None:
        """Queue one event for the client's webhook; never fails the request that caused it."""
        if not self.wanted(client):
            return
        body = {"type": event_type, "timestamp": _now_rfc3339(), "data": dict(data)}
        try:
            self.add(f"msg_{uuid.uuid4().hex}", client, json.dumps(body))
        except STORE_ERRORS as exc:
            log.warning("event %s for %s lost: %s", event_type, client, type(exc).__name__)
            metrics.EVENTS.labels(event_type, "lost").inc()
            return
        metrics.EVENTS.labels(event_type, "queued").inc()

    def track(self, client: str, view: Mapping[str, Any], expires_at: float) -> None:
        """Remember a pending verification, so that its expiry can be told."""
        if not self.wanted(client):
            return
        snapshot = json.dumps({"client": client, "view": dict(view)})
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.zadd(self.expiring_key, {view["id"]: int(expires_at * 1000)})
            pipe.hset(self.pending_key, view["id"], snapshot)
            pipe.execute()
        except STORE_ERRORS as exc:
            log.warning("expiry of %s not tracked: %s", view["id"], type(exc).__name__)

    def untrack(self, verification_id: str) -> None:
        """The verification ended (approved, denied, canceled, locked or failed)."""
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.zrem(self.expiring_key, verification_id)
            pipe.hdel(self.pending_key, verification_id)
            pipe.execute()
        except STORE_ERRORS as exc:
            log.warning("expiry of %s not untracked: %s", verification_id, type(exc).__name__)

    def expire_due(self, now: float, limit: int = 50) -> int:
        """Tell every tracked verification that expired while pending; each once, whichever
        worker gets it (ZREM decides)."""
        r: Any = self.redis
        told = 0
        for verification_id in r.zrangebyscore(
            self.expiring_key, "-inf", int(now * 1000), 0, limit
        ):
            if not r.zrem(self.expiring_key, verification_id):
                continue  # another worker took it
            raw = r.hget(self.pending_key, verification_id)
            r.hdel(self.pending_key, verification_id)
            if raw is None:
                continue
            snapshot = json.loads(raw)
            view = {**snapshot["view"], "status": "expired"}
            self.emit(snapshot["client"], "verification.expired", view)
            told += 1
        return told

    def add(self, message_id: str, client: str, body: str, queued: float | None = None) -> None:
        """Queue an event; ``queued`` (epoch seconds) starts its retry window (default: now)."""
        at = time.time() if queued is None else queued
        # The stream's age bound holds even while no worker runs: approximately (Redis drops
        # whole nodes of about 100 entries, which is cheap), silently; the worker's exact trim
        # counts what it drops.
        oldest = f"{int((time.time() - self.settings.max_age) * 1000)}-0"
        self.redis.xadd(
            self.stream,
            {"id": message_id, "client": client, "body": body, "queued": f"{at:.3f}"},
            minid=oldest,
            approximate=True,
        )

    def backlog(self, now: float) -> tuple[int, float]:
        """(events not yet delivered, age in seconds of the oldest one): delivered events are
        deleted from the stream, so what is left is waiting, new or pending."""
        r: Any = self.redis
        waiting = int(r.xlen(self.stream))
        first = r.xrange(self.stream, "-", "+", count=1)
        if not first:
            return waiting, 0.0
        queued_ms = int(str(first[0][0]).split("-", 1)[0])
        return waiting, max(0.0, now - queued_ms / 1000)

    def trim(self, now: float, max_age: float) -> int:
        """Drop events older than ``max_age`` from the stream (no worker ran for that long, or
        their receiver never answered): a bound on what a missing worker leaves in Redis."""
        r: Any = self.redis
        oldest = f"{int((now - max_age) * 1000)}-0"
        trimmed = int(r.xtrim(self.stream, minid=oldest, approximate=False))
        if trimmed:
            metrics.EVENTS_TRIMMED.inc(trimmed)
            log.warning("dropped %d events older than %.0f s from the stream", trimmed, max_age)
        return trimmed

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


def _now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def block_ms_for(socket_timeout: float) -> int:
    """How long a worker's ``XREADGROUP`` may block: half the Redis socket timeout. A block as
    long as the timeout ends in a client-side timeout on every idle read (and a read the server
    answered after the client gave up leaves its events pending until they are claimed)."""
    return max(50, int(socket_timeout * 1000 / 2))


class EventWorker:
    """One consumer of the ``senders`` group; :meth:`run` until :meth:`stop`."""

    def __init__(
        self,
        queue: EventQueue,
        name: str | None = None,
        per_client: int = PER_CLIENT,
        guard: Callable[[], None] | None = None,
    ) -> None:
        self.queue = queue
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

    def stop(self) -> None:
        self._stop.set()

    def drain(self, timeout: float = 30.0) -> None:
        """Wait until the deliveries in flight are done (tests; a stopping worker)."""
        deadline = time.monotonic() + timeout
        while self._in_flight and time.monotonic() < deadline:
            time.sleep(0.01)

    def _submit(self, entry_id: str, fields: Mapping[str, str], tries: int) -> bool:
        """Hand one delivery to its client's pool; False when it is already in flight here."""
        client = fields.get("client", "")
        with self._lock:
            if entry_id in self._in_flight:
                return False
            self._in_flight.add(entry_id)
            pool = self._pools.get(client)
            if pool is None:
                pool = ThreadPoolExecutor(self.per_client, thread_name_prefix="deliver")
                self._pools[client] = pool
        pool.submit(self._deliver_and_beat, entry_id, dict(fields), tries)
        return True

    def _deliver_and_beat(self, entry_id: str, fields: Mapping[str, str], tries: int) -> None:
        try:
            self.deliver(entry_id, fields, tries)
        except STORE_ERRORS as exc:
            # The event stays pending: the orphan scan (or another worker) tries it again.
            log.warning("event worker: redis unavailable: %s", type(exc).__name__)
        except Exception:
            log.exception("event worker: delivery of %s failed", fields.get("id", "?"))
        finally:
            with self._lock:
                self._in_flight.discard(entry_id)
            if self._heartbeat is not None:
                self._heartbeat.touch()

    def ensure_group(self) -> None:
        try:
            self.queue.redis.xgroup_create(self.queue.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _ensure_group_when_up(self) -> None:
        try:
            self.ensure_group()
        except STORE_ERRORS as exc:
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
        Once a minute, events older than the stream's age bound are trimmed."""
        self._heartbeat = heartbeat
        self.ensure_group()
        next_trim = 0.0
        while not self._stop.is_set():
            try:
                if time.monotonic() >= next_trim:
                    self.queue.trim(time.time(), self.queue.settings.max_age)
                    next_trim = time.monotonic() + 60
                if self.guard is not None:
                    self.guard()
                self.step(block_ms)
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                # Redis came back empty (a restart without persistence) or a replica without
                # the group took over: make the stream and the group again and go on.
                log.warning(
                    "event worker: the consumer group %s is gone (Redis restarted empty or "
                    "failed over); created it again",
                    GROUP,
                )
                self._ensure_group_when_up()
                continue
            except STORE_ERRORS as exc:
                log.warning("event worker: redis unavailable: %s", type(exc).__name__)
                self._stop.wait(1.0)
                continue
            if heartbeat is not None:
                heartbeat.touch()
        for pool in self._pools.values():
            pool.shutdown(wait=True, cancel_futures=True)

    def step(self, block_ms: int = 1000) -> int:
        """Hand what is due to the delivery pools: retries whose time has come (by due time),
        now and then events left pending by a worker that died, then new events; how many
        deliveries were handed over."""
        self.queue.expire_due(time.time())
        handed = 0
        # redis-py's reply types are unions of every encoding; these replies are decoded text.
        r: Any = self.queue.redis
        stream, due = self.queue.stream, self.queue.due_key
        for entry_id in r.zrangebyscore(due, "-inf", int(time.time() * 1000), 0, 100):
            if entry_id in self._in_flight or not r.zrem(due, entry_id):
                continue  # here already, or another worker took it
            handed += self._claim_and_submit(entry_id)
        if time.monotonic() >= self._next_orphan_scan:
            handed += self._claim_orphans()
            self._next_orphan_scan = time.monotonic() + ORPHAN_SCAN_SECONDS
        for _, entries in (
            r.xreadgroup(GROUP, self.name, {stream: ">"}, count=10, block=block_ms) or []
        ):
            for entry_id, fields in entries:
                handed += self._submit(entry_id, fields, 1)
        return handed

    def _claim_and_submit(self, entry_id: str, tries: int | None = None) -> int:
        r: Any = self.queue.redis
        stream = self.queue.stream
        if tries is None:
            pending = r.xpending_range(stream, GROUP, entry_id, entry_id, 1)
            if not pending:
                return 0
            tries = int(pending[0]["times_delivered"]) + 1
        for claimed_id, fields in r.xclaim(stream, GROUP, self.name, 0, [entry_id]):
            if fields:
                return int(self._submit(claimed_id, fields, tries))
            # Trimmed from the stream while pending: nothing is left to deliver.
            r.xack(stream, GROUP, claimed_id)
        return 0

    def _claim_orphans(self) -> int:
        """Events pending with no due time for longer than their back-off and a grace: the
        worker that held them died between reading and scheduling them."""
        r: Any = self.queue.redis
        settings = self.queue.settings
        # Longer than any delivery can take, so a live worker's delivery is never taken over.
        grace = settings.connect_timeout + settings.read_timeout + 1
        handed = 0
        for entry in r.xpending_range(self.queue.stream, GROUP, "-", "+", 100):
            entry_id, tries = entry["message_id"], int(entry["times_delivered"])
            wait_ms = (self.backoff(entry_id, tries) + grace) * 1000
            if entry_id in self._in_flight or entry["time_since_delivered"] < wait_ms:
                continue
            if r.zscore(self.queue.due_key, entry_id) is not None:
                continue
            handed += self._claim_and_submit(entry_id, tries + 1)
        return handed

    def deliver(self, entry_id: str, fields: Mapping[str, str], tries: int = 1) -> None:
        """One try (the ``tries``-th) of one event; a failed one is logged with what the
        receiver answered and when the next try comes, never with the payload."""
        queue, settings = self.queue, self.queue.settings
        client, body, message_id = fields["client"], fields["body"], fields["id"]
        event_type = json.loads(body).get("type", "unknown")
        url = settings.webhooks.get(client)
        secrets = settings.secrets.get(client)
        if (
            url is None
            or not secrets
            or time.time() - float(fields["queued"]) > (settings.retry_window)
        ):
            self._give_up(entry_id, message_id, client, body, event_type)
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
            queue.redis.xack(queue.stream, GROUP, entry_id)
            queue.redis.xdel(queue.stream, entry_id)
            queue.redis.zrem(queue.due_key, entry_id)
            queue.redis.hdel(queue.last_key, entry_id)
            metrics.EVENTS.labels(event_type, "delivered").inc()
            metrics.EVENT_DELIVERIES.labels(client, event_type, "delivered").inc()
        else:
            metrics.EVENTS.labels(event_type, "retry").inc()
            metrics.EVENT_DELIVERIES.labels(client, event_type, "retry").inc()
            next_try = self.backoff(entry_id, tries)
            queue.redis.zadd(queue.due_key, {entry_id: int((time.time() + next_try) * 1000)})
            queue.redis.hset(queue.last_key, entry_id, answer)
            log.warning(
                "event %s (%s) for %s: try %d failed (%s); next try in about %.0f s",
                message_id,
                event_type,
                client,
                tries,
                answer,
                next_try,
            )

    def _give_up(
        self, entry_id: str, message_id: str, client: str, body: str, event_type: str
    ) -> None:
        queue = self.queue
        last = queue.redis.hget(queue.last_key, entry_id)
        record = {
            "client": client,
            "body": body,
            "failed_at": _now_rfc3339(),
            "last_answer": str(last) if last else "never tried",
        }
        queue.redis.hset(queue.failed_key, message_id, json.dumps(record))
        queue.redis.xack(queue.stream, GROUP, entry_id)
        queue.redis.xdel(queue.stream, entry_id)
        queue.redis.zrem(queue.due_key, entry_id)
        queue.redis.hdel(queue.last_key, entry_id)
        metrics.EVENTS.labels(event_type, "failed").inc()
        metrics.EVENT_DELIVERIES.labels(client, event_type, "failed").inc()
        log.warning("event %s (%s) for %s kept as failed", message_id, event_type, client)


def serve_worker_metrics(port: int, backlog: Callable[[], tuple[int, float]]) -> None:
    """The worker's ``GET /metrics`` on ``port`` (all addresses), in a thread of its own: its
    delivery counters and latency, and the stream's backlog read at scrape time."""
    collector = metrics.BacklogCollector(backlog)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != "/metrics":
                self.send_error(404)
                return
            text, content_type = metrics.exposition(collector)
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)  # noqa: S104 - a scrape target
    threading.Thread(target=server.serve_forever, daemon=True, name="metrics").start()
    log.info("worker metrics on port %d", port)
