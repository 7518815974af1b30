"""Events to the app: signed Standard Webhooks, queued in a Redis stream, sent by workers.

Each API client may have one webhook URL (``OTPSVC_EVENT_WEBHOOKS``) and its signing secret
(``OTPSVC_EVENT_WEBHOOK_SECRETS``, ``whsec_...``). Events are added to one Redis stream
(``<prefix>:{<prefix>:events}:stream``) right after the state change they report: the change
happens in the number's slot and the stream lives in its own, so on a cluster the two cannot be
one atomic step, and a process that dies between them loses that event (it is logged as lost
when Redis refuses it).

Workers (``otpsvc worker``; several may run, each a consumer of the ``senders`` group) deliver
them: a 2xx answer acknowledges an event; any other answer, a timeout or a refused connection
leaves it pending, and it is claimed again once it has been idle for its back-off (exponential
from ``OTPSVC_EVENT_RETRY_BASE`` seconds, capped at an hour, with jitter), by whichever worker
is alive. Past ``OTPSVC_EVENT_RETRY_WINDOW`` (24 hours) an event is kept as failed: ``otpsvc
events failed`` lists those, ``otpsvc events replay ID`` queues one again. A worker killed in
the middle of a delivery loses nothing: its pending event is claimed by the next worker.
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

    def __init__(self, queue: EventQueue, name: str | None = None) -> None:
        self.queue = queue
        self.name = name or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self.session = requests.Session()
        self.session.trust_env = False
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

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
        self.ensure_group()
        next_trim = 0.0
        while not self._stop.is_set():
            try:
                if time.monotonic() >= next_trim:
                    self.queue.trim(time.time(), self.queue.settings.max_age)
                    next_trim = time.monotonic() + 60
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

    def step(self, block_ms: int = 1000) -> int:
        """Retry what is due, then take new events; how many deliveries were tried."""
        self.queue.expire_due(time.time())
        tried = 0
        # redis-py's reply types are unions of every encoding; these replies are decoded text.
        r: Any = self.queue.redis
        stream = self.queue.stream
        min_idle = int(self.queue.settings.retry_base * 500)
        for entry in r.xpending_range(stream, GROUP, "-", "+", 50, idle=min_idle):
            if (
                entry["time_since_delivered"]
                < self.backoff(entry["message_id"], entry["times_delivered"]) * 1000
            ):
                continue
            claimed = r.xclaim(stream, GROUP, self.name, min_idle, [entry["message_id"]])
            for entry_id, fields in claimed:
                if fields:
                    self.deliver(entry_id, fields, tries=entry["times_delivered"] + 1)
                    tried += 1
                else:
                    # Trimmed from the stream while pending: nothing is left to deliver.
                    r.xack(stream, GROUP, entry_id)
        for _, entries in (
            r.xreadgroup(GROUP, self.name, {stream: ">"}, count=10, block=block_ms) or []
        ):
            for entry_id, fields in entries:
                self.deliver(entry_id, fields)
                tried += 1
        return tried

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
            metrics.EVENTS.labels(event_type, "delivered").inc()
            metrics.EVENT_DELIVERIES.labels(client, event_type, "delivered").inc()
        else:
            metrics.EVENTS.labels(event_type, "retry").inc()
            metrics.EVENT_DELIVERIES.labels(client, event_type, "retry").inc()
            log.warning(
                "event %s (%s) for %s: try %d failed (%s); next try in about %.0f s",
                message_id,
                event_type,
                client,
                tries,
                answer,
                self.backoff(entry_id, tries),
            )

    def _give_up(
        self, entry_id: str, message_id: str, client: str, body: str, event_type: str
    ) -> None:
        record = {"client": client, "body": body, "failed_at": _now_rfc3339()}
        queue = self.queue
        queue.redis.hset(queue.failed_key, message_id, json.dumps(record))
        queue.redis.xack(queue.stream, GROUP, entry_id)
        queue.redis.xdel(queue.stream, entry_id)
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
