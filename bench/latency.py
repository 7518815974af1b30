"""otpsvc with a provider that takes its time: ``.venv/bin/python bench/latency.py`` (~3 minutes).

Real voice APIs take 0.2-2 s to accept a call and sometimes hang until the read timeout. This
runs ``otpsvc serve`` as shipped (gunicorn.conf.py: 2 gthread workers of OTPSVC_WORKER_THREADS
threads, OTPSVC_PROVIDER_CONCURRENCY of them for provider waits) against a Termii stand-in with
a latency profile, and, for comparison in the same run, with gunicorn's sync worker (the former
default). Per profile, with 16 concurrent callers placing calls (a caller refused with 503
waits what its ``Retry-After`` says, as a well-behaved client does):

- calls placed per second by the pod, and how many starts were refused ``providers_busy``;
- ``/otp/check`` p50/p95/p99 while those starts run (wrong codes on earlier verifications, one
  checker at about 20 a second: a person typing a code);
- ``/healthz`` worst case (polled every 50 ms, as a liveness probe would, only more often);
- worker CPU per call placed.

Profiles: ``instant``; ``0.4s`` steady; ``spread`` (log-normal, p50 0.3 s, p99 about 2 s);
``hang`` (the provider answers only after the 10 s read timeout; 8 callers). With the instant
provider each caller does start + check pairs, and the pairs per second and CPU per pair of the
two worker models are compared (target: gthread within 10 % of sync).

Everything runs on loopback; loops are bounded in time.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path

import requests
from argon2.low_level import Type, hash_secret
from capacity import wait_until_serving

from bench import (  # bench/bench.py, beside this file
    API_KEY,
    TermiiStandIn,
    cpu_seconds,
    phone,
    service_env,
)
from otpsvc.config import Argon2Params
from otpsvc.dev.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
HEADERS = {"Authorization": f"Bearer {API_KEY}"}
READ_TIMEOUT = 10.0


def spread() -> float:
    """Log-normal provider latency: median 0.3 s, p99 about 2 s."""
    return min(0.3 * math.exp(random.gauss(0, 0.82)), 9.0)


PROFILES: dict[str, Callable[[], float]] = {
    "instant": lambda: 0.0,
    "0.4s": lambda: 0.4,
    "spread": spread,
    "hang": lambda: READ_TIMEOUT + 2,
}


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


@dataclass
class Result:
    profile: str
    worker: str
    seconds: float
    placed: int = 0
    busy: int = 0
    other: dict[int, int] = field(default_factory=dict)
    pairs: int = 0
    check_ms: list[float] = field(default_factory=list)
    health_ms: list[float] = field(default_factory=list)
    cpu: float = 0.0


class Server:
    """``otpsvc serve`` on a free port; ``worker`` 'gthread' (shipped), 'gthread-nowait' (no
    wait for a provider slot, as before 0.2) or 'sync'."""

    def __init__(self, redis_url: str, termii_port: int, worker: str, profile: str) -> None:
        self.port = free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("OTPSVC_")},
            **service_env(redis_url, termii_port),
            "OTPSVC_PROVIDER_READ_TIMEOUT": str(READ_TIMEOUT),
            "OTPSVC_MAX_CHECK_ATTEMPTS": "10",
            "PORT": str(self.port),
            "HOST": "127.0.0.1",
        }
        if worker == "sync":
            # gunicorn turns sync into gthread when threads > 1: both are set.
            env["GUNICORN_CMD_ARGS"] = "--worker-class sync --threads 1"
        if worker == "gthread-nowait":
            # The bulkhead as it was: a start finding its worker's slots taken is refused at once.
            env["OTPSVC_PROVIDER_SLOT_WAIT"] = "0"
        if profile == "hang":
            # Timeouts would open the provider's circuit, and then no start would wait on it at
            # all: kept closed, so that 8 starts do wait while checks and probes are measured.
            env["OTPSVC_BREAKER_THRESHOLD"] = "100"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "otpsvc", "serve"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.base = f"http://127.0.0.1:{self.port}"
        wait_until_serving(self.base, self.process)
        time.sleep(1)  # both workers up

    def workers(self) -> list[int]:
        out = subprocess.run(
            ["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True, check=False
        ).stdout
        return [int(pid) for pid in out.split()]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(40)
        except subprocess.TimeoutExpired:
            self.process.kill()


numbers = iter(range(10**6))
numbers_lock = threading.Lock()


def next_phone() -> str:
    with numbers_lock:
        return phone(next(numbers))


def run_profile(
    redis_url: str, termii_port: int, profile: str, worker: str, callers: int, seconds: float
) -> Result:
    server = Server(redis_url, termii_port, worker, profile)
    result = Result(profile, worker, seconds)
    try:
        TermiiStandIn.latency = staticmethod(PROFILES["instant"])
        with requests.Session() as session:
            checked = []
            for _ in range(40):
                response = session.post(
                    server.base + "/otp/start", json={"phone": next_phone()}, headers=HEADERS
                )
                checked.append(response.json()["id"])
        TermiiStandIn.latency = staticmethod(PROFILES[profile])
        pairs = profile == "instant"
        stop = threading.Event()
        lock = threading.Lock()

        def caller() -> None:
            with requests.Session() as s:
                while not stop.is_set():
                    number = next_phone()
                    try:
                        r = s.post(
                            server.base + "/otp/start",
                            json={"phone": number},
                            headers=HEADERS,
                            timeout=READ_TIMEOUT + 20,
                        )
                    except requests.RequestException:
                        continue
                    with lock:
                        if r.status_code in (200, 201):
                            result.placed += 1
                        elif r.json().get("code") == "providers_busy":
                            result.busy += 1
                        else:
                            result.other[r.status_code] = result.other.get(r.status_code, 0) + 1
                    if r.status_code == 503:
                        # As a well-behaved caller does: wait what Retry-After says.
                        time.sleep(float(r.headers.get("Retry-After", "1")))
                    if pairs and r.status_code == 201:
                        code = TermiiStandIn.codes[number.lstrip("+")]
                        body = {"id": r.json()["id"], "code": code}
                        s.post(server.base + "/otp/check", json=body, headers=HEADERS)
                        with lock:
                            result.pairs += 1

        def checker() -> None:
            with requests.Session() as s:
                i = 0
                while not stop.is_set():
                    body = {"id": checked[i % len(checked)], "code": "000000"}
                    i += 1
                    began = time.perf_counter()
                    s.post(server.base + "/otp/check", json=body, headers=HEADERS, timeout=60)
                    result.check_ms.append((time.perf_counter() - began) * 1000)
                    time.sleep(0.05)

        def prober() -> None:
            with requests.Session() as s:
                while not stop.is_set():
                    began = time.perf_counter()
                    s.get(server.base + "/healthz", timeout=60)
                    result.health_ms.append((time.perf_counter() - began) * 1000)
                    time.sleep(0.05)

        threads = [threading.Thread(target=caller) for _ in range(callers)]
        if not pairs:
            threads += [threading.Thread(target=checker), threading.Thread(target=prober)]
        pids = server.workers()
        cpu_before = cpu_seconds(pids)
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        result.cpu = cpu_seconds(pids) - cpu_before
        TermiiStandIn.latency = staticmethod(PROFILES["instant"])
        for t in threads:
            t.join(READ_TIMEOUT + 30)
    finally:
        server.stop()
    return result


def report(r: Result) -> str:
    placed_s = r.placed / r.seconds
    cpu_each = r.cpu / max(1, r.placed) * 1000
    if r.profile == "instant":
        return (
            f"| {r.profile} | {r.worker} | {r.pairs / r.seconds:.1f} pairs/s | "
            f"{r.cpu / max(1, r.pairs) * 1000:.1f} ms CPU per pair (start + check) |"
        )
    checks = r.check_ms
    return (
        f"| {r.profile} | {r.worker} | {placed_s:.1f} calls/s ({r.busy} providers_busy"
        f"{', other ' + str(r.other) if r.other else ''}) | check p50 "
        f"{statistics.median(checks) if checks else float('nan'):.0f} / p95 "
        f"{percentile(checks, 95):.0f} / p99 {percentile(checks, 99):.0f} ms "
        f"({len(checks)} checks); /healthz worst {max(r.health_ms or [math.nan]):.0f} ms; "
        f"{cpu_each:.1f} ms CPU per call placed |"
    )


def argon2_threads(seconds: float = 3.0) -> str:
    """argon2 hashes a second at otpsvc's parameters from 1 and from 2 threads of one process:
    argon2-cffi releases the GIL around the C call, so 2 threads should use both cores."""
    params = Argon2Params()

    def rate(threads: int) -> float:
        done = [0] * threads
        stop = time.monotonic() + seconds

        def loop(i: int) -> None:
            while time.monotonic() < stop:
                hash_secret(
                    b"x" * 32, b"s" * 16, params.time_cost, params.memory_kib, 1, 16, Type.ID
                )
                done[i] += 1

        workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return sum(done) / seconds

    one, two = rate(1), rate(2)
    return f"argon2 in one process: 1 thread {one:.0f}/s, 2 threads {two:.0f}/s ({two / one:.2f}x)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--callers", type=int, default=16)
    parser.add_argument("--profiles", default="instant,0.4s,spread,hang")
    parser.add_argument("--workers", default="gthread,sync")
    options = parser.parse_args()
    print(argon2_threads(), flush=True)
    termii = ThreadingHTTPServer(("127.0.0.1", 0), TermiiStandIn)
    termii.daemon_threads = True
    threading.Thread(target=termii.serve_forever, daemon=True).start()
    rows = []
    with RedisServer() as server:
        for profile in options.profiles.split(","):
            for worker in options.workers.split(","):
                if worker == "sync" and profile == "hang":
                    continue  # measured for 0.4 s; a hang only makes it worse
                callers = 8 if profile == "hang" else options.callers
                seconds = max(options.seconds, READ_TIMEOUT + 4) if profile == "hang" else None
                result = run_profile(
                    server.url,
                    termii.server_port,
                    profile,
                    worker,
                    callers,
                    seconds or options.seconds,
                )
                rows.append(report(result))
                print(rows[-1], flush=True)
    termii.shutdown()
    print("\n| provider | worker | placed | latency while starts run |")
    print("|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
