"""otpsvc benchmark: run with ``.venv/bin/python bench/bench.py`` (about a minute, loopback only).

Measures, in one run on this machine:
1. ms per argon2 verify at the configured parameters (and the library defaults, for scale);
2. raw argon2 verifies/s of 2 processes, then ``/otp/check`` requests/s under gunicorn with 2 sync
   workers, and their ratio (target: the service keeps >= 85% of the raw rate);
3. Redis round trips per start and per check (``INFO stats``) and the commands in them (MONITOR);
4. bytes of Redis memory per pending verification (target: <= 512), and per refused start sent
   with a new ``Idempotency-Key`` each time (target: <= 400; it was about 1.5 KB when a record
   was kept for every answer).

Everything runs on loopback: a bundled redis-server, a local stand-in for Termii's voice-call
endpoint, and gunicorn. Request loops are bounded in count and time. Then ``bench/capacity.py``
measures capacity on one Redis and on a local Redis Cluster (see its docstring).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import capacity  # bench/capacity.py, beside this file
import redis
import requests
from argon2 import PasswordHasher

from otpsvc.config import Argon2Params
from otpsvc.core.keyring import Keyring
from otpsvc.dev.monitor import commands_sent, round_trips
from otpsvc.dev.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "bench-client-key-0123456789abcdef"


class TermiiStandIn(BaseHTTPRequestHandler):
    """Answers POST /api/sms/otp/call (and /api/sms/send) as Termii does and remembers each
    code it was given.

    HTTP/1.1 with keep-alive, as a provider's API is: otpsvc's session reuses its connection.
    Nagle's algorithm is off, as on any HTTP server: with it, the body (a second small write after
    the headers) waited for the client's delayed ACK, 40 ms on every call."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    codes: dict[str, str] = {}  # noqa: RUF012 - shared by the handler threads on purpose
    lock = threading.Lock()
    #: Seconds each answer waits (bench/latency.py sets provider latency profiles).
    latency: Callable[[], float] = staticmethod(lambda: 0.0)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.lock:
            if "sms" in body:
                # "Send message": the code is in the text.
                self.codes[body["to"]] = re.findall(r"\d{4,8}", body["sms"])[0]
            else:
                self.codes[body["phone_number"]] = str(body["code"])
        delay = type(self).latency()
        if delay:
            time.sleep(delay)
        payload = json.dumps({"code": "ok", "message_id": "1", "message": "Successfully Sent"})
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload.encode())
        except OSError:
            pass  # the caller gave up (its read timeout)

    def log_message(self, *args: Any) -> None:
        return None


def ms_per_verify(hasher: PasswordHasher, seconds: float = 1.0) -> float:
    encoded = hasher.hash(b"x" * 32)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        hasher.verify(encoded, b"x" * 32)
        count += 1
    return (time.perf_counter() - start) / count * 1000


def _verify_loop(args: tuple[Argon2Params, float]) -> tuple[int, float]:
    params, seconds = args
    keyring = Keyring(b"s" * 40, params)
    verifier = keyring.hash_code("id", "123456")
    count, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        keyring.verify_code(verifier, "id", "654321")
        count += 1
    return count, time.process_time() - cpu


def raw_verifies(params: Argon2Params, seconds: float) -> tuple[float, float]:
    """Verifies per second of 2 processes (wall clock), and verifies per CPU-second."""
    with multiprocessing.Pool(2) as pool:
        results = pool.map(_verify_loop, [(params, seconds)] * 2)
    count = sum(c for c, _ in results)
    return count / seconds, count / sum(cpu for _, cpu in results)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes have used, from /proc (Linux)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def drive(url: str, bodies: list[dict[str, str]], threads: int) -> float:
    """POST every body from ``threads`` keep-alive sessions; requests per second."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    chunks = [bodies[i::threads] for i in range(threads)]
    failures: list[int] = []

    def work(chunk: list[dict[str, str]]) -> None:
        with requests.Session() as session:
            for body in chunk:
                status = session.post(url, json=body, headers=headers, timeout=10).status_code
                if status != 200:
                    failures.append(status)

    workers = [threading.Thread(target=work, args=(c,)) for c in chunks]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    if failures:
        raise RuntimeError(f"{len(failures)} checks failed, e.g. HTTP {failures[0]}")
    return len(bodies) / elapsed


def service_env(redis_url: str, termii_port: int) -> dict[str, str]:
    """otpsvc's settings for a benchmark: the local Termii stand-in, and limits too high to
    refuse anything, so every request does its full work."""
    return {
        "OTPSVC_REDIS_URL": redis_url,
        "OTPSVC_SECRET_KEY": "bench-secret-0123456789abcdef0123456789",
        "OTPSVC_API_KEYS": f"webapp-prod:{API_KEY}",
        "OTPSVC_PROVIDERS": "termii",
        "OTPSVC_TERMII_BASE_URL": f"http://127.0.0.1:{termii_port}",
        "OTPSVC_TERMII_API_KEY": "bench-termii-key",
        "OTPSVC_RATE_LIMIT_START_IP": "100000 per minute",
        "OTPSVC_RATE_LIMIT_CHECK_IP": "100000 per minute",
        "OTPSVC_RATE_LIMIT_CLIENT": "1000000 per minute",
        "OTPSVC_ALLOWED_COUNTRIES": "NG",
        **{
            f"OTPSVC_{name}": "100000 per hour"
            for name in (
                "VELOCITY_PHONE",
                "VELOCITY_IP",
                "VELOCITY_PREFIX",
                "VELOCITY_COUNTRY",
                "VELOCITY_CLIENT",
                "CALL_BUDGET",
            )
        },
        "OTPSVC_LOG_LEVEL": "WARNING",
    }


def phone(i: int) -> str:
    """Distinct Nigerian mobile numbers (+234 803 ...), which the default number types allow."""
    return f"+234803{1000000 + i:07d}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verifications", type=int, default=400)
    parser.add_argument("--checks-each", type=int, default=10)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--memory-kib", type=int, default=Argon2Params.memory_kib)
    parser.add_argument("--time-cost", type=int, default=Argon2Params.time_cost)
    parser.add_argument("--worker-args", default="", help="GUNICORN_CMD_ARGS for the capacity runs")
    parser.add_argument("--capacity-seconds", type=float, default=4.0)
    parser.add_argument("--no-capacity", action="store_true", help="skip the capacity runs")
    options = parser.parse_args()

    params = Argon2Params(memory_kib=options.memory_kib, time_cost=options.time_cost)
    chosen = PasswordHasher(params.time_cost, params.memory_kib, params.parallelism, 16, 16)
    print(f"argon2id m={params.memory_kib} KiB t={params.time_cost} p={params.parallelism}:")
    print(f"  {ms_per_verify(chosen):.2f} ms per verify (one core)")
    print(f"  library defaults (64 MiB, t=3, p=4): {ms_per_verify(PasswordHasher(), 2):.1f} ms")

    termii = ThreadingHTTPServer(("127.0.0.1", 0), TermiiStandIn)
    threading.Thread(target=termii.serve_forever, daemon=True).start()
    with RedisServer() as server:
        port = free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("OTPSVC_")},
            **service_env(server.url, termii.server_port),
            "OTPSVC_MAX_CHECK_ATTEMPTS": str(options.checks_each),
            "OTPSVC_ARGON2_MEMORY_KIB": str(params.memory_kib),
            "OTPSVC_ARGON2_TIME_COST": str(params.time_cost),
        }
        gunicorn = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{port}", "wsgi:app"],
            cwd=ROOT,
            env=env,
            stderr=subprocess.DEVNULL,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            capacity.wait_until_serving(base, gunicorn)
            headers = {"Authorization": f"Bearer {API_KEY}"}
            with requests.Session() as session:

                def start(i: int) -> str:
                    response = session.post(
                        base + "/otp/start", json={"phone": phone(i)}, headers=headers, timeout=10
                    )
                    if response.status_code not in (200, 201):
                        raise RuntimeError(f"start failed: {response.status_code} {response.text}")
                    return str(response.json()["id"])

                ids = [start(i) for i in range(options.verifications)]
                code0 = TermiiStandIn.codes[phone(0).lstrip("+")]
                session.post(
                    base + "/otp/check", json={"id": ids[0], "code": code0}, headers=headers
                )
                wrong = "000000"

                def check(i: int, code: str) -> Any:
                    body = {"id": ids[i], "code": code}
                    return session.post(base + "/otp/check", json=body, headers=headers)

                check(3, wrong)  # Redis loads each script on its first use: warm them all
                start_commands = commands_sent(server.url, lambda: start(options.verifications))
                start_trips = round_trips(server.url, lambda: start(options.verifications + 1))
                check_commands = commands_sent(server.url, lambda: check(1, wrong))
                wrong_trips = round_trips(server.url, lambda: check(4, wrong))
                code2 = TermiiStandIn.codes[phone(2).lstrip("+")]
                right_commands = commands_sent(server.url, lambda: check(2, code2))
                code5 = TermiiStandIn.codes[phone(5).lstrip("+")]
                right_trips = round_trips(server.url, lambda: check(5, code5))

            client = redis.Redis.from_url(server.url, decode_responses=True)
            # Every pending record and index: the allocator's size classes make single keys
            # differ by a few bytes, so the median and the largest are both reported.
            records = sorted(
                client.memory_usage(key)
                for key in client.scan_iter("otpsvc:{[0-9a-f]*}:v:*")
                if client.hget(key, "st") == "pending" and client.hexists(key, "h")
            )
            indexes = sorted(
                client.memory_usage(key) for key in client.scan_iter("otpsvc:{[0-9a-f]*}:o:*")
            )
            pairs = sorted(r + i for r, i in zip(records, indexes, strict=False))
            before = client.info("memory")["used_memory"]
            extra = 1000
            with requests.Session() as session:
                for i in range(extra):
                    session.post(
                        base + "/otp/start",
                        json={"phone": phone(10_000 + i)},
                        headers=headers,
                        timeout=10,
                    )
            per_verification = (client.info("memory")["used_memory"] - before) / extra
            # A client refused over and over (a country not served), a new Idempotency-Key each
            # time: what stays in Redis is the request-limit entries, not an answer per key.
            before = client.info("memory")["used_memory"]
            with requests.Session() as session:
                for i in range(extra):
                    refused = session.post(
                        base + "/otp/start",
                        json={"phone": f"+8190{12_340_000 + i}"},
                        headers={**headers, "Idempotency-Key": f"refused-{i}"},
                        timeout=10,
                    )
                    if refused.status_code != 403:
                        raise RuntimeError(f"expected 403, got {refused.status_code}")
            per_refusal = (client.info("memory")["used_memory"] - before) / extra

            # Termii codes never start with 0, so "000000" is always wrong: every check is a
            # full argon2 verify, and none ends its verification early (ids 0-5 were used above).
            bodies = [
                {"id": vid, "code": "000000"}
                for vid in ids[6:]
                for _ in range(options.checks_each - 1)
            ]
            raw, raw_per_cpu = raw_verifies(params, options.seconds)
            workers = [
                int(pid)
                for pid in subprocess.run(
                    ["pgrep", "-P", str(gunicorn.pid)], capture_output=True, text=True, check=True
                ).stdout.split()
            ]
            cpu_before = cpu_seconds(workers)
            served = drive(base + "/otp/check", bodies, options.threads)
            served_per_cpu = len(bodies) / (cpu_seconds(workers) - cpu_before)
        finally:
            gunicorn.terminate()
            gunicorn.wait(10)
    capacity_env = {k: v for k, v in env.items() if k != "OTPSVC_REDIS_URL"}

    print("\n/otp/check under gunicorn (2 sync workers, wrong codes, 16 client threads):")
    print(f"  raw argon2, 2 processes: {raw:.0f} verifies/s, {raw_per_cpu:.0f} per CPU-second")
    print(
        f"  service: {served:.0f} checks/s ({len(bodies)} checks) = {served / raw:.0%} of raw;"
        " the load generator and Redis share the same 2 cores"
    )
    print(
        f"  service per CPU-second of the 2 workers: {served_per_cpu:.0f} checks"
        f" = {served_per_cpu / raw_per_cpu:.0%} of raw argon2 per CPU-second"
    )
    print("\nRedis round trips (requests Redis read; commands by MONITOR, Lua's own not counted):")
    print(f"  start: {start_trips} round trips, commands {start_commands}")
    print(f"  check, wrong code: {wrong_trips} round trips, commands {check_commands}")
    print(f"  check, right code: {right_trips} round trips, commands {right_commands}")
    print("\nRedis memory per pending verification:")
    print(
        f"  MEMORY USAGE record + index over {len(records)} pending verifications: median "
        f"{records[len(records) // 2]} + {indexes[len(indexes) // 2]} = "
        f"{pairs[len(pairs) // 2]} bytes; largest {records[-1]} + {indexes[-1]} = "
        f"{records[-1] + indexes[-1]} bytes"
    )
    print(f"  used_memory growth over {extra} starts: {per_verification:.0f} bytes each")
    print("  (the growth also holds each call's rate-limiter and velocity-limit entries)")
    print(
        f"  used_memory growth over {extra} refused starts, a new Idempotency-Key each: "
        f"{per_refusal:.0f} bytes each (target <= 400)"
    )
    if not options.no_capacity:
        run = capacity.Run(
            env=capacity_env,
            codes=TermiiStandIn.codes,
            api_key=API_KEY,
            cpu_seconds=cpu_seconds,
            worker_args=options.worker_args,
            seconds=options.capacity_seconds,
        )
        capacity.report(params, run)
    termii.shutdown()


if __name__ == "__main__":
    main()
