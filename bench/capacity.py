"""Capacity of otpsvc on one Redis and on a local Redis Cluster (part of ``bench/bench.py``).

For each deployment: gunicorn (``otpsvc serve``, 2 workers) in front of it; then

1. Redis commands and Redis CPU per start and per check (every Redis process's ``INFO``
   counters, masters and replicas alike, before and after a run of only starts or only checks);
2. pairs (a start, then a check with the right code) per second at concurrency 1, 4 and 16;
3. the workers' CPU per pair, and what is left of it outside the two argon2 runs of a pair (the
   start hashes the code, the check verifies it): the workers' CPU minus the CPU their argon2
   runs took, which they count themselves (``otpsvc_argon2_cpu_seconds_total`` in /metrics), so
   both figures come from the same processes in the same run. The argon2 CPU of one hash and
   one verify measured alone, outside the server, is printed beside it for scale;
4. the same for a bare Flask app (``floor_app.py``), without argon2 and with one argon2 run per
   request: code that runs between argon2 runs is slower than code run back to back
   (``bench/cold.py``), so the floor that pays the same price is the fair one to compare with.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any

import redis
import requests
from prometheus_client.parser import text_string_to_metric_families

from otpsvc.config import Argon2Params
from otpsvc.core.keyring import Keyring
from otpsvc.dev.deployments import LocalCluster
from otpsvc.dev.redis_server import RedisServer, free_port

CONCURRENCY = (1, 4, 16)


@dataclass
class Target:
    name: str
    url: str
    ports: list[int]
    pids: list[int]


@contextmanager
def deployments() -> Iterator[Iterator[Target]]:
    def each() -> Iterator[Target]:
        with RedisServer() as server:
            assert server.process is not None
            yield Target("one Redis", server.url, [server.port], [server.process.pid])
        with LocalCluster() as cluster:
            nodes = [n for n in cluster.nodes if n.process is not None]
            yield Target(
                "Redis Cluster, 3 masters + 3 replicas",
                cluster.url,
                [n.port for n in nodes],
                [n.process.pid for n in nodes if n.process is not None],
            )

    yield each()


def argon2_cpu_ms(params: Argon2Params, rounds: int = 40) -> float:
    """CPU ms of one hash plus one verify at these parameters: a pair's argon2 work."""
    keyring = Keyring(b"capacity-bench-secret-0123456789abcdef", params)
    begin = time.process_time()
    for i in range(rounds):
        keyring.verify_code(keyring.hash_code(str(i), "123456"), str(i), "123456")
    return (time.process_time() - begin) / rounds * 1000


def redis_counters(ports: list[int]) -> tuple[int, float]:
    """Commands processed and CPU seconds used, summed over every Redis process."""
    commands, cpu = 0, 0.0
    for port in ports:
        with redis.Redis(port=port) as client:
            stats, used = client.info("stats"), client.info("cpu")
            commands += int(stats["total_commands_processed"])
            cpu += float(used["used_cpu_user"]) + float(used["used_cpu_sys"])
    return commands, cpu


class Driver:
    """Starts and checks against one running otpsvc, from keep-alive sessions."""

    def __init__(self, base: str, api_key: str, codes: dict[str, str]) -> None:
        self.base = base
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.codes = codes
        self._numbers = count(5_000_000)
        self._lock = threading.Lock()

    def phone(self) -> str:
        with self._lock:
            return f"+234803{next(self._numbers):07d}"

    def start(self, session: requests.Session) -> tuple[str, str]:
        phone = self.phone()
        response = session.post(
            self.base + "/otp/start", json={"phone": phone}, headers=self.headers, timeout=10
        )
        if response.status_code != 201:
            raise RuntimeError(f"start answered {response.status_code}: {response.text}")
        return str(response.json()["id"]), self.codes[phone.lstrip("+")]

    def check(self, session: requests.Session, vid: str, code: str) -> None:
        response = session.post(
            self.base + "/otp/check", json={"id": vid, "code": code}, headers=self.headers
        )
        if response.status_code != 200 or not response.json()["valid"]:
            raise RuntimeError(f"check answered {response.status_code}: {response.text}")

    def threads(self, n: int, work: Callable[[requests.Session], int]) -> int:
        done: list[int] = []

        def run() -> None:
            with requests.Session() as session:
                done.append(work(session))

        pool = [threading.Thread(target=run) for _ in range(n)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        return sum(done)


def argon2_cpu_seconds(base: str) -> float:
    """The argon2 CPU seconds every worker of the server behind ``base`` counted so far."""
    text = requests.get(base + "/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "otpsvc_argon2_cpu_seconds"
        for sample in family.samples
        if sample.name == "otpsvc_argon2_cpu_seconds_total"
    )


def worker_pids(process: subprocess.Popen[bytes], count: int = 2, timeout: float = 30) -> list[int]:
    """The pids of the ``count`` workers of the gunicorn master ``process``. gunicorn spawns
    its workers one after another, and the first may serve before the last exists: a CPU
    figure read from too few workers would be too low."""
    deadline = time.monotonic() + timeout
    while True:
        found = subprocess.run(
            ["pgrep", "-P", str(process.pid)], capture_output=True, text=True, check=False
        ).stdout.split()
        if len(found) >= count:
            return [int(pid) for pid in found]
        if time.monotonic() > deadline:
            raise RuntimeError(f"gunicorn started {len(found)} of {count} workers")
        time.sleep(0.1)


def wait_until_serving(base: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Until ``GET /healthz`` answers; raises if the server exits or takes too long."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            requests.get(base + "/healthz", timeout=1)
            return
        except requests.RequestException:
            # Refused while it starts, or slow to answer on a busy machine: ask again.
            if time.monotonic() > deadline or process.poll() is not None:
                raise
            time.sleep(0.1)


@dataclass
class Run:
    """What every measurement needs besides its deployment."""

    env: dict[str, str]
    codes: dict[str, str]
    api_key: str
    cpu_seconds: Callable[[list[int]], float]
    worker_args: str
    seconds: float
    argon2_ms: float = 0.0


def measure(target: Target, run: Run) -> dict[Any, Any]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "otpsvc", "serve"],
        env={
            **run.env,
            "OTPSVC_REDIS_URL": target.url,
            "PORT": str(port),
            "HOST": "127.0.0.1",
            "WEB_CONCURRENCY": "2",
            "GUNICORN_CMD_ARGS": run.worker_args,
        },
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(base, process)
        workers = worker_pids(process)
        driver = Driver(base, run.api_key, run.codes)

        def pairs_of(number: int) -> Callable[[requests.Session], int]:
            def work(session: requests.Session) -> int:
                for _ in range(number):
                    driver.check(session, *driver.start(session))
                return number

            return work

        driver.threads(4, pairs_of(5))  # warm up: every script loaded, every worker connected

        result: dict[Any, Any] = {}
        pending: list[tuple[str, str]] = []
        lock = threading.Lock()

        def starts(session: requests.Session) -> int:
            for _ in range(75):
                started = driver.start(session)
                with lock:
                    pending.append(started)
            return 75

        def checks(session: requests.Session) -> int:
            done = 0
            while True:
                with lock:
                    if not pending:
                        return done
                    vid, code = pending.pop()
                driver.check(session, vid, code)
                done += 1

        for kind, work in (("start", starts), ("check", checks)):
            before = redis_counters(target.ports)
            done = driver.threads(4, work)
            after = redis_counters(target.ports)
            result[kind] = ((after[0] - before[0]) / done, (after[1] - before[1]) / done * 1e6)

        for c in CONCURRENCY:
            stop = time.monotonic() + run.seconds

            def pairs(session: requests.Session, stop: float = stop) -> int:
                made = 0
                while time.monotonic() < stop:
                    driver.check(session, *driver.start(session))
                    made += 1
                return made

            # Each scrape stays outside the window it measures.
            argon2_before = argon2_cpu_seconds(base)
            cpu_before = run.cpu_seconds(workers)
            began = time.perf_counter()
            made = driver.threads(c, pairs)
            elapsed = time.perf_counter() - began
            cpu_ms = (run.cpu_seconds(workers) - cpu_before) / made * 1000
            argon2_ms = (argon2_cpu_seconds(base) - argon2_before) / made * 1000
            if argon2_ms > cpu_ms:
                raise RuntimeError("the workers' argon2 CPU exceeds their CPU: a worker was missed")
            result[c] = (made / elapsed, cpu_ms, argon2_ms)
        return result
    finally:
        process.terminate()
        process.wait(10)


@dataclass
class Floor:
    """A bare Flask app's worker CPU per pair, and the argon2 CPU it counted in that pair."""

    cpu_ms: float
    argon2_ms: float = 0.0

    @property
    def outside_ms(self) -> float:
        return self.cpu_ms - self.argon2_ms


def floor_cpu(run: Run, argon2: Argon2Params | None = None) -> Floor:
    """Worker CPU per pair of a bare Flask app (bench/floor_app.py) under the same gunicorn
    settings, at concurrency 4: what any Flask service spends on two requests. With ``argon2``,
    each of its requests also runs one argon2 hash at those parameters, as otpsvc's do."""
    port = free_port()
    argon2_env = {}
    if argon2:
        argon2_env["FLOOR_ARGON2_KIB"] = str(argon2.memory_kib)
        argon2_env["FLOOR_ARGON2_TIME_COST"] = str(argon2.time_cost)
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{port}", "floor_app:app"],
        cwd=Path(__file__).resolve().parent,
        env={**run.env, **argon2_env, "GUNICORN_CMD_ARGS": run.worker_args},
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    argon2_seconds: list[float] = []
    try:
        wait_until_serving(base, process)  # any answer will do: the bare app has no /healthz
        workers = worker_pids(process)

        def pairs(session: requests.Session) -> int:
            made, spent, stop = 0, 0.0, time.monotonic() + run.seconds
            while time.monotonic() < stop:
                started = session.post(base + "/otp/start", json={"phone": "+2348031234567"})
                checked = session.post(
                    base + "/otp/check", json={"id": started.json()["id"], "code": "123456"}
                )
                for answer in (started, checked):
                    spent += float(answer.headers.get("X-Argon2-CPU-Seconds", 0))
                made += 1
            argon2_seconds.append(spent)
            return made

        cpu_before = run.cpu_seconds(workers)
        made = Driver(base, run.api_key, run.codes).threads(4, pairs)
        cpu_ms = (run.cpu_seconds(workers) - cpu_before) / made * 1000
        return Floor(cpu_ms, sum(argon2_seconds) / made * 1000)
    finally:
        process.terminate()
        process.wait(10)


def outside(cpu_ms: float, argon2_ms: float, floor: Floor, warm: Floor) -> str:
    """A pair's worker CPU outside argon2, as a multiple of the bare app's without argon2 and
    of the bare app's outside the same two argon2 runs."""
    rest = cpu_ms - argon2_ms
    return (
        f"outside argon2 {rest:.2f} ms = {rest / warm.outside_ms:.1f} times the bare app, "
        f"{rest / floor.outside_ms:.1f} times the bare app with argon2"
    )


def report(params: Argon2Params, run: Run) -> None:
    run.argon2_ms = argon2_cpu_ms(params)
    server = run.worker_args or "sync workers"
    print(f"\nCapacity (gunicorn, 2 {server}; a pair = a start and a check with the right code;")
    print(f"a pair's two argon2 runs alone, outside the server = {run.argon2_ms:.1f} ms of CPU):")
    warm = floor_cpu(run)
    print(f"  a bare Flask app, same server: {warm.cpu_ms:.2f} ms of worker CPU a pair")
    # Code run between argon2 runs runs slower than code run back to back (bench/cold.py); the
    # same bare app with the same two argon2 runs pays that too.
    floor = floor_cpu(run, params)
    print(
        f"  the same bare app with one argon2 run per request: {floor.cpu_ms:.2f} ms a pair, "
        f"of it argon2 {floor.argon2_ms:.2f} ms, outside argon2 {floor.outside_ms:.2f} ms"
    )
    with deployments() as each:
        for target in each:
            r = measure(target, run)
            print(f"  {target.name}:")
            for kind in ("start", "check"):
                commands, cpu_us = r[kind]
                print(f"    per {kind}: {commands:.1f} Redis commands, {cpu_us:.0f} µs Redis CPU")
            for c in CONCURRENCY:
                rate, cpu_ms, argon2_ms = r[c]
                print(
                    f"    concurrency {c:>2}: {rate:5.1f} pairs/s; worker CPU {cpu_ms:.2f} ms a "
                    f"pair, of it argon2 {argon2_ms:.2f} ms, "
                    f"{outside(cpu_ms, argon2_ms, floor, warm)}"
                )
