"""The escalation ladder's cost and timing: ``.venv/bin/python bench/ladder.py`` (about 40 s).

1. The extra Redis work per verification with a three-step ladder (both later steps taken by
   their wait): round trips and bytes of the record, against the same verification without a
   ladder (start, then an approval).
2. How many due steps one worker fires a second, and how late: 500 steps fall due at 100 a second
   while a ``LadderRunner`` (the worker's, as many threads as its provider slots) runs them against
   a provider stand-in that takes 0.2 s per call; lateness is the time from a step's due time
   to its call reaching the provider (target: p99 under 1 s).
3. Fairness between tenants: 200 steps of one client and one of another fall due together on a
   worker with the shipped provider slots (8), against the 0.2 s provider; how long the other
   client's step waited for its call (target: under 2 s).

Loopback only: a bundled redis-server and the Termii stand-in of ``bench/bench.py``.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import TermiiStandIn  # bench/bench.py, beside this file
from otpsvc.app import create_app
from otpsvc.core.ladder import LadderRunner
from otpsvc.dev.monitor import round_trips
from otpsvc.dev.redis_server import RedisServer, free_port
from otpsvc.store.shards import ladder_key, tag_of

KEY = "bench-client-key-0123456789abcdef"
#: Limits set out of the way: the bench measures the ladder, not them.
SHARES = [
    "OTPSVC_VELOCITY_PHONE",
    "OTPSVC_VELOCITY_IP",
    "OTPSVC_VELOCITY_PREFIX",
    "OTPSVC_VELOCITY_COUNTRY",
    "OTPSVC_VELOCITY_CLIENT",
    "OTPSVC_RATE_LIMIT_CLIENT",
    "OTPSVC_RATE_LIMIT_START_IP",
    "OTPSVC_RATE_LIMIT_CHECK_IP",
]
CEILINGS = [
    f"OTPSVC_{name}"
    for name in ("VELOCITY_PHONE_ALL", "VELOCITY_PREFIX_ALL", "VELOCITY_COUNTRY_ALL", "CALL_BUDGET")
]


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def env(redis_url: str, provider_url: str, **extra: str) -> dict[str, str]:
    return {
        "OTPSVC_REDIS_URL": redis_url,
        "OTPSVC_SECRET_KEY": "bench-secret-key-0123456789abcdef0123456789",
        "OTPSVC_API_KEYS": f"bench:{KEY}",
        "OTPSVC_PROVIDERS": "termii",
        "OTPSVC_TERMII_BASE_URL": provider_url,
        "OTPSVC_TERMII_API_KEY": "bench-termii-key",
        "OTPSVC_ALLOWED_COUNTRIES": "NG",
        "OTPSVC_METRICS_TOKEN": "bench-metrics-token-0123456789abcdef",
        "OTPSVC_LOG_LEVEL": "ERROR",
        **dict.fromkeys(SHARES, "1000000 per hour"),
        **dict.fromkeys(CEILINGS, "3000000 per hour"),
        **extra,
    }


def one_life(redis_url: str, provider_url: str, ladder: str) -> tuple[int, int]:
    """(round trips, bytes of the approved record) of a start, the ladder's steps (each taken
    by its wait) and an approval."""
    clock = Clock()
    app = create_app(env(redis_url, provider_url, OTPSVC_LADDER=ladder), clock=clock)
    runtime = app.extensions["otpsvc"]
    client = app.test_client()
    headers = {"Authorization": f"Bearer {KEY}"}
    runner = LadderRunner(runtime.service)
    phone = f"+23480312{int(time.time() * 1000) % 100000:05d}"
    state: dict[str, Any] = {}

    def life() -> None:
        nonlocal phone
        started = client.post("/otp/start", json={"phone": phone}, headers=headers)
        state["id"] = started.get_json()["id"]
        for wait in (31, 61) if ladder else ():
            clock.now += wait
            runner.run_due()
            runner.drain()
        code = TermiiStandIn.codes[phone.lstrip("+")]
        client.post("/otp/check", json={"id": state["id"], "code": code}, headers=headers)

    life()  # the scripts loaded, the connections made: not counted
    phone = f"+23480313{int(time.time() * 1000) % 100000:05d}"
    trips = round_trips(redis_url, life)
    return trips, int(runtime.redis.memory_usage(runtime.store.record_key(state["id"])) or 0)


def cost(redis_url: str, provider_url: str) -> None:
    plain = one_life(redis_url, provider_url, "")
    laddered = one_life(redis_url, provider_url, "voice:termii/30,voice:termii/60,voice:termii")
    print(f"no ladder: {plain[0]} round trips for a start and an approval; record {plain[1]} B")
    print(f"3-step ladder: {laddered[0]} round trips for a start, two steps and an approval; "
          f"record {laddered[1]} B")  # fmt: skip


def record_placements(runtime: Any) -> dict[str, float]:
    """When each verification's call reached the provider (filled in as calls are placed)."""
    placed: dict[str, float] = {}
    original = runtime.dispatcher.place

    def place(route: Any, call: Any, **kwargs: Any) -> Any:
        placed[call.verification_id] = time.time()
        return original(route, call, **kwargs)

    runtime.dispatcher.place = place
    return placed


def make_due(runtime: Any, due: dict[str, float]) -> None:
    """Each verification's next step due at its time, as a no-answer report leaves it: the step
    due, the resend cooldown lifted."""
    pipe = runtime.redis.pipeline(transaction=False)
    prefix = runtime.settings.redis_prefix
    for vid, at in due.items():
        pipe.zadd(ladder_key(prefix, tag_of(vid)), {vid: int(at * 1000)})
        pipe.hset(runtime.store.record_key(vid), "ra", int(time.time() * 1000))
    pipe.execute()


def run_worker_until(runtime: Any, placed: dict[str, float], calls: int, seconds: float) -> None:
    """A ``LadderRunner`` as the worker runs it (its provider slots; ``run_due`` every 0.25 s at
    most) until ``calls`` calls were placed or ``seconds`` passed."""
    runner = LadderRunner(runtime.service, threads=runtime.settings.provider_concurrency)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            runner.run_due()
            stop.wait(0.25)

    thread = threading.Thread(target=loop)
    thread.start()
    deadline = time.time() + seconds
    while len(placed) < calls and time.time() < deadline:
        time.sleep(0.1)
    stop.set()
    thread.join()
    runner.drain()


def timing(redis_url: str, provider_url: str) -> None:
    """500 steps due at 100 a second; one runner fires them; how late each call was."""
    TermiiStandIn.latency = staticmethod(lambda: 0.2)
    app = create_app(
        env(
            redis_url,
            provider_url,
            OTPSVC_LADDER="voice:termii/500,voice:termii",
            OTPSVC_CODE_TTL="600",
            OTPSVC_WORKER_THREADS="48",
            OTPSVC_PROVIDER_CONCURRENCY="32",
        )
    )
    runtime = app.extensions["otpsvc"]
    client = app.test_client()
    headers = {"Authorization": f"Bearer {KEY}"}
    TermiiStandIn.latency = staticmethod(lambda: 0.0)
    ids = []
    for i in range(500):
        answer = client.post("/otp/start", json={"phone": f"+2348041{i:06d}"}, headers=headers)
        ids.append(answer.get_json()["id"])
    TermiiStandIn.latency = staticmethod(lambda: 0.2)
    placed = record_placements(runtime)
    start = time.time() + 1.0
    due = {vid: start + i / 100 for i, vid in enumerate(ids)}
    make_due(runtime, due)
    outcomes: dict[str, int] = {}
    escalate = runtime.service.escalate

    def counted(vid: str) -> str:
        outcome = escalate(vid)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        return outcome

    runtime.service.escalate = counted  # type: ignore[method-assign]
    run_worker_until(runtime, placed, len(ids), 30)
    if not placed:
        print(f"no step placed: {outcomes}")
        return
    late = sorted(placed[vid] - due[vid] for vid in placed)
    spread = max(placed.values()) - min(placed.values())
    p99 = late[int(len(late) * 0.99) - 1]
    print(f"due steps: {len(placed)} of {len(ids)} placed over {spread:.1f} s "
          f"({len(placed) / spread:.0f} a second); late by median {statistics.median(late):.2f} s, "
          f"p99 {p99:.2f} s, max {late[-1]:.2f} s")  # fmt: skip


def fairness(redis_url: str, provider_url: str) -> None:
    """200 due steps of a noisy client and one of a quiet one, at the same moment."""
    quiet_key = "bench-quiet-key-0123456789abcdefgh"
    app = create_app(
        env(
            redis_url,
            provider_url,
            OTPSVC_API_KEYS=f"noisy:{KEY},quiet:{quiet_key}",
            OTPSVC_LADDER="voice:termii/500,voice:termii",
            OTPSVC_CODE_TTL="600",
        )
    )
    runtime = app.extensions["otpsvc"]
    client = app.test_client()
    TermiiStandIn.latency = staticmethod(lambda: 0.0)
    ids = []
    for i, key in enumerate([KEY] * 200 + [quiet_key]):
        answer = client.post(
            "/otp/start",
            json={"phone": f"+2348051{i:06d}"},
            headers={"Authorization": f"Bearer {key}"},
        )
        ids.append(answer.get_json()["id"])
    quiet = ids[-1]
    TermiiStandIn.latency = staticmethod(lambda: 0.2)
    placed = record_placements(runtime)
    due_at = time.time()
    make_due(runtime, dict.fromkeys(ids, due_at))
    run_worker_until(runtime, placed, len(ids), 60)
    noisy = sorted(at - due_at for vid, at in placed.items() if vid != quiet)
    print(f"fairness: the quiet client's step placed {placed[quiet] - due_at:.2f} s after it fell "
          f"due, behind 200 of the noisy client's (theirs took {noisy[-1]:.1f} s in all, "
          f"{runtime.settings.provider_concurrency} slots, 0.2 s a call)")  # fmt: skip


def main() -> None:
    with RedisServer() as redis_server:
        port = free_port()
        server = ThreadingHTTPServer(("127.0.0.1", port), TermiiStandIn)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        provider_url = f"http://127.0.0.1:{port}"
        cost(redis_server.url, provider_url)
        timing(redis_server.url, provider_url)
        fairness(redis_server.url, provider_url)
        server.shutdown()


if __name__ == "__main__":
    main()
