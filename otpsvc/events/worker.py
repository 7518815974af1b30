"""``otpsvc worker``'s delivery loop: one consumer of every stream, a pool per client, retries
by due time, orphans claimed; and its metrics port (see :mod:`otpsvc.events`)."""

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
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import redis
import requests
from standardwebhooks import Webhook

from otpsvc import metrics
from otpsvc.errors import StoreUnavailable
from otpsvc.events.queue import (
    CLUSTER_POLL_SECONDS,
    EXPIRY_SCAN_SECONDS,
    GROUP,
    MAX_BACKOFF_SECONDS,
    ORPHAN_SCAN_SECONDS,
    OUTAGES,
    PER_CLIENT,
    WORKER_BEAT_SECONDS,
    EventQueue,
    _now_rfc3339,
    render,
)
from otpsvc.store.connection import is_cluster

log = logging.getLogger("otpsvc.events")


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
        message_id, event_type, body, queued = render(
            fields, settings.max_attempts, settings.currency
        )
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
