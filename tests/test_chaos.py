"""kill -9 under load: API workers and event workers die at random moments, and afterwards every
change visible in Redis has exactly one event delivered (duplicates only as redeliveries of the
same webhook-id), the receiver saw no event for a change that did not happen, and the funnel
counted each verification begun and each approval exactly once.

The real pieces: ``otpsvc serve`` (gunicorn, two workers, the shipped settings) and two
``otpsvc worker`` processes, on one redis-server and on a Redis Cluster, with a provider
stand-in that takes 0.2 s per call and a receiver that verifies every delivery with the
Standard Webhooks library. A chaos thread sends SIGKILL to a random API worker (gunicorn starts
another) or event worker (started again, as its Deployment would) every 0.3-1 s while eight
threads of an app's backend start, check, fail and cancel verifications.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from standardwebhooks import Webhook

from otpsvc.core.funnel import FunnelAsk, funnel
from otpsvc.dev.redis_server import RedisServer, free_port
from otpsvc.events import EventQueue, EventSettings
from otpsvc.store.connection import connect
from otpsvc.store.rollups import Rollups
from tests.conftest import KEY_A, wrong_code
from tests.fakes.receiver import Receiver
from tests.fakes.termii import FakeTermii
from tests.test_cli import wait_until_serving
from tests.test_events import SECRET_A
from tests.test_serving import serve_env

AUTH = {"Authorization": f"Bearer {KEY_A}"}
MAX_ATTEMPTS = 3
LOAD_SECONDS = 20.0


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


class Stack:
    """``otpsvc serve`` and two event workers on one Redis, for one test."""

    def __init__(
        self, redis_url: str, termii: FakeTermii, receiver: Receiver, **extra: str
    ) -> None:
        self.redis_url = redis_url
        self.prefix = f"chaos{uuid.uuid4().hex[:6]}"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = serve_env(
            redis_url,
            termii,
            self.port,
            **{
                "OTPSVC_REDIS_PREFIX": self.prefix,
                "OTPSVC_MAX_CHECK_ATTEMPTS": str(MAX_ATTEMPTS),
                "OTPSVC_EVENT_WEBHOOKS": f"client-a={receiver.url}/hooks/otp",
                "OTPSVC_EVENT_WEBHOOK_SECRETS": f"client-a={SECRET_A}",
                "OTPSVC_EVENT_RETRY_BASE": "0.2",
                # The load is one app's backend calling many numbers of one country.
                "OTPSVC_VELOCITY_COUNTRY": "100000 per hour",
                "OTPSVC_VELOCITY_COUNTRY_ALL": "300000 per hour",
                "OTPSVC_VELOCITY_CLIENT": "100000 per hour",
                "OTPSVC_CALL_BUDGET": "300000 per hour",
                "OTPSVC_LOG_LEVEL": "ERROR",
                "WEB_CONCURRENCY": "2",
                **extra,
            },
        )
        self.server = self._spawn("serve")
        wait_until_serving(self.base, self.server, timeout=60)
        self.workers = [self._spawn("worker"), self._spawn("worker")]
        self.kills: Counter[str] = Counter()
        #: The status of every start's answer ("lost" when a kill took it).
        self.starts: Counter[str] = Counter()

    def _spawn(self, command: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "otpsvc", command],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def kill_one(self, rng: random.Random) -> None:
        if rng.random() < 0.5:
            api_workers = _children(self.server.pid)
            if api_workers:
                os.kill(rng.choice(api_workers), signal.SIGKILL)
                self.kills["api worker"] += 1
            return
        self.kill_worker(rng)

    def kill_worker(self, rng: random.Random) -> None:
        """SIGKILL to one event worker, started again at once (as its Deployment would)."""
        i = rng.randrange(len(self.workers))
        self.workers[i].kill()
        self.workers[i].wait(10)
        self.kills["event worker"] += 1
        self.workers[i] = self._spawn("worker")

    def queue(self) -> EventQueue:
        client = connect(self.redis_url, socket_timeout=5.0, connect_timeout=5.0)
        settings = EventSettings(
            webhooks={"client-a": "unused"},
            secrets={"client-a": (SECRET_A,)},
            max_attempts=MAX_ATTEMPTS,
        )
        return EventQueue(client, self.prefix, settings)

    def close(self) -> None:
        for process in [self.server, *self.workers]:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in [self.server, *self.workers]:
            try:
                process.wait(40)
            except subprocess.TimeoutExpired:
                process.kill()


def _load(stack: Stack, termii: FakeTermii, thread: int, stop: threading.Event) -> None:
    """One of the app backend's threads: new numbers, then approve, cancel, lock out or leave
    pending; answers lost to a killed worker are just lost (the backend would retry)."""
    rng = random.Random(thread)
    session = requests.Session()
    n = 0
    while not stop.is_set():
        n += 1
        phone = f"+234803{thread}{n:06d}"
        try:
            try:
                started = session.post(
                    f"{stack.base}/otp/start", json={"phone": phone}, headers=AUTH, timeout=10
                )
            except requests.RequestException:
                stack.starts["lost"] += 1
                continue
            stack.starts[str(started.status_code)] += 1
            if started.status_code != 201:
                continue
            vid = started.json()["id"]
            action = rng.choice(["approve", "cancel", "lock", "leave"])
            if action == "approve":
                body = {"id": vid, "code": termii.code_for(phone)}
                session.post(f"{stack.base}/otp/check", json=body, headers=AUTH, timeout=10)
            elif action == "cancel":
                session.post(f"{stack.base}/otp/{vid}/cancel", headers=AUTH, timeout=10)
            elif action == "lock":
                body = {"id": vid, "code": wrong_code(termii.code_for(phone))}
                for _ in range(MAX_ATTEMPTS):
                    session.post(f"{stack.base}/otp/check", json=body, headers=AUTH, timeout=10)
        except requests.RequestException:
            continue


def expected_events(stack: Stack) -> dict[str, str]:
    """What Redis shows happened, per verification: the one event it must have been told."""
    client = connect(stack.redis_url, socket_timeout=5.0, connect_timeout=5.0)
    expected = {}
    for key in client.scan_iter(match=f"{stack.prefix}:*:v:*", count=1000):
        record = client.hgetall(key)
        vid = str(key).rsplit(":v:", 1)[1]
        status = record.get("st")
        if status in ("approved", "canceled", "denied"):
            expected[vid] = f"verification.{status}"
        elif status == "failed":
            expected[vid] = "verification.delivery_failed"
        elif int(record.get("a", 0)) >= MAX_ATTEMPTS:
            expected[vid] = "verification.max_attempts_reached"
        elif record.get("p"):
            # Its call was placed and it was still pending: told when it expires.
            expected[vid] = "verification.expired"
    client.close()
    return expected


def run_chaos(stack: Stack, termii: FakeTermii, receiver: Receiver, label: str) -> None:
    stop = threading.Event()
    threads = [
        threading.Thread(target=_load, args=(stack, termii, t, stop), daemon=True) for t in range(8)
    ]
    for thread in threads:
        thread.start()
    rng = random.Random(20)
    deadline = time.monotonic() + LOAD_SECONDS
    while time.monotonic() < deadline:
        time.sleep(rng.uniform(0.3, 1.0))
        stack.kill_one(rng)
    stop.set()
    for thread in threads:
        thread.join(30)
    # The API's last requests are done: what Redis shows now is what happened.
    expected = expected_events(stack)
    queue = stack.queue()
    # Time passes (the pending ones expire): the workers tell those too.
    while queue.expire_due(time.time() + 400):
        pass
    deadline = time.monotonic() + 90
    while queue.backlog(time.time())[0] or queue.redis.zcard(queue.due_key):
        assert time.monotonic() < deadline, f"backlog left: {queue.backlog(time.time())}"
        time.sleep(0.5)
    time.sleep(1.0)  # a redelivery still in flight lands
    assert not queue.failed()

    told: dict[tuple[str, str], set[str]] = defaultdict(set)
    deliveries = 0
    for request in list(receiver.requests):
        headers = {k.lower(): v for k, v in request.headers.items()}
        event = Webhook(SECRET_A).verify(request.body, headers)
        told[(event["data"]["id"], event["type"])].add(headers["webhook-id"])
        deliveries += 1
    counted = _funnel_matches_redis(stack)
    lost = [vid for vid, kind in expected.items() if not told.get((vid, kind))]
    phantom = [pair for pair in told if expected.get(pair[0]) != pair[1]]
    twice = [pair for pair, ids in told.items() if len(ids) > 1]
    distinct = sum(len(ids) for ids in told.values())
    pytest.FIGURES[f"chaos, {label}"] = (  # type: ignore[attr-defined]
        f"{LOAD_SECONDS:.0f} s, kill -9 of {stack.kills['api worker']} API workers and "
        f"{stack.kills['event worker']} event workers; starts {dict(stack.starts)}: "
        f"{len(expected)} changes, "
        f"{distinct} events, {deliveries - distinct} redeliveries, lost {len(lost)}, "
        f"phantom {len(phantom)}; funnel {counted}"
    )
    assert stack.kills["api worker"] >= 3
    assert stack.kills["event worker"] >= 3
    assert stack.starts["201"] >= 100
    assert len(expected) >= 100
    assert lost == []
    assert phantom == []
    assert twice == []


def _funnel_matches_redis(stack: Stack) -> str:
    """The funnel's counts, folded by workers killed at random, equal what Redis shows: each
    verification begun and each approval once, no loss, no double count."""
    client = connect(stack.redis_url, socket_timeout=5.0, connect_timeout=5.0)
    rollups = Rollups(client, stack.prefix)
    begun = approved = 0
    for key in client.scan_iter(match=f"{stack.prefix}:*:v:*", count=1000):
        record = client.hgetall(key)
        begun += bool(record.get("p"))  # its first send finalized, accepted or failed
        approved += record.get("st") == "approved"
    deadline = time.monotonic() + 60
    while any(client.xrange(k, f"({m}", "+", count=1) for k, m in _markers(rollups).items()):
        assert time.monotonic() < deadline, "the workers did not fold every outcome"
        time.sleep(0.5)
    now = int(time.time() * 1000)
    span, start, end = rollups.span(now - 3_600_000, now, now)
    total = funnel(FunnelAsk(start, end, (), None), rollups.read("c", span, start, end), None)
    client.close()
    figures = total["total"]
    assert (figures["verifications"], figures["approved"]) == (begun, approved)
    return f"{begun} verifications and {approved} approvals counted exactly"


def _markers(rollups: Rollups) -> dict[str, str]:
    found = rollups.redis.hgetall(rollups.markers)
    return {key: found.get(tag, "0-0") for key, tag in rollups.streams.items()}


@pytest.fixture
def stack_on(termii: FakeTermii, receiver: Receiver) -> Iterator[Callable[[str], Stack]]:
    stacks: list[Stack] = []

    def build(redis_url: str, **extra: str) -> Stack:
        stacks.append(Stack(redis_url, termii, receiver, **extra))
        return stacks[-1]

    termii.delay = 0.2
    # A receiver that takes its time: a killed event worker is often mid-delivery.
    receiver.delay = 0.2
    yield build
    for stack in stacks:
        stack.close()


def test_kill_9_under_load_on_one_redis_loses_no_event(
    stack_on, termii: FakeTermii, receiver: Receiver
):
    with RedisServer() as server:
        run_chaos(stack_on(server.url), termii, receiver, "one Redis")


def test_kill_9_under_load_on_a_cluster_loses_no_event(
    stack_on, cluster_url: str, termii: FakeTermii, receiver: Receiver
):
    run_chaos(stack_on(cluster_url), termii, receiver, "Redis Cluster")


def test_kill_9_of_the_workers_running_ladders_places_no_step_twice(
    stack_on, termii: FakeTermii, receiver: Receiver
):
    """60 verifications nobody answers, each with a three-step ladder, while SIGKILL hits the
    event workers that run the steps every 0.3-1 s: no step is ever placed twice; a step is
    lost only when its worker died between taking it and recording its call."""
    with RedisServer() as server:
        stack = stack_on(
            server.url,
            OTPSVC_LADDER="voice:termii/5,voice:termii/10,voice:termii",
            OTPSVC_RESEND_COOLDOWN="5",
        )
        session = requests.Session()
        phones = [f"+2348051{i:06d}" for i in range(60)]
        for phone in phones:
            answer = session.post(
                f"{stack.base}/otp/start", json={"phone": phone}, headers=AUTH, timeout=10
            )
            assert answer.status_code == 201, answer.text
        rng = random.Random(22)
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(0.3, 1.0))
            stack.kill_worker(rng)
        queue = stack.queue()
        store_keys = list(queue.redis.scan_iter(match=f"{stack.prefix}:*:lq"))
        wait_until = time.monotonic() + 60
        while any(queue.redis.zcard(key) for key in store_keys):
            assert time.monotonic() < wait_until, "steps still due"
            time.sleep(0.5)
        per_phone = Counter(r.json["phone_number"] for r in termii.calls)
        placed = sum(per_phone[p.lstrip("+")] for p in phones)
        twice = [p for p in phones if per_phone[p.lstrip("+")] > 3]
        lost = 3 * len(phones) - placed
        pytest.FIGURES["chaos, ladders"] = (  # type: ignore[attr-defined]
            f"{len(phones)} verifications x 3 steps, kill -9 of {stack.kills['event worker']} "
            f"event workers: {placed} calls, placed twice {len(twice)}, lost {lost} (a worker "
            "killed between taking a step and recording its call)"
        )
        assert stack.kills["event worker"] >= 10
        assert twice == []
        assert lost <= stack.kills["event worker"]
