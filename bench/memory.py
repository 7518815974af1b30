"""otpsvc's memory under a burst of checks: ``.venv/bin/python bench/memory.py`` (~1 minute).

Runs ``otpsvc serve`` as shipped (2 gthread workers of 12 threads, argon2 at 16 MiB) and sends
bursts of concurrent wrong checks, each one argon2 run. It prints, per configuration, the peak
resident memory of the whole server (the master and its workers: each process's high-water mark,
``VmHWM``, summed) and what the server still holds after the burst (``VmRSS``). The pod's memory
limit is sized from these (docs/deploying.md).

Configurations, in one run: as shipped; without the argon2 bound (``OTPSVC_ARGON2_CONCURRENCY`` as
high as the threads); and without the allocator settings ``otpsvc serve`` makes (glibc's dynamic
mmap threshold then keeps every freed 16 MiB block in the heap).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

import requests
from capacity import wait_until_serving

from bench import API_KEY, TermiiStandIn, phone, service_env  # bench/bench.py, beside this file
from otpsvc.dev.monitor import process_tree_memory
from otpsvc.dev.redis_server import RedisServer, free_port

HEADERS = {"Authorization": f"Bearer {API_KEY}"}


def burst(base: str, ids: list[str], concurrent: int, rounds: int) -> None:
    """``rounds`` bursts of ``concurrent`` wrong checks released together."""
    for _ in range(rounds):
        barrier = threading.Barrier(concurrent)

        def check(i: int, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            requests.post(
                f"{base}/otp/check",
                json={"id": ids[i % len(ids)], "code": "000000"},
                headers=HEADERS,
                timeout=60,
            )

        threads = [threading.Thread(target=check, args=(i,)) for i in range(concurrent)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


def measure(
    redis_url: str,
    termii_port: int,
    concurrent: int,
    rounds: int,
    *,
    glibc_defaults: bool = False,
    **overrides: str,
) -> tuple[int, int]:
    """Peak and after-burst KiB of ``otpsvc serve`` with ``overrides`` over the shipped
    settings; ``glibc_defaults``: gunicorn as ``otpsvc serve`` runs it, but without the
    allocator settings ``otpsvc serve`` adds."""
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")},
        **service_env(redis_url, termii_port),
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "OTPSVC_MAX_CHECK_ATTEMPTS": "10",
        **overrides,
    }
    if glibc_defaults:
        config = str(Path(__file__).resolve().parent.parent / "otpsvc" / "gunicorn.conf.py")
        command = ["-m", "gunicorn", "--config", config, "otpsvc.app:create_app()"]
    else:
        command = ["-m", "otpsvc", "serve"]
    process = subprocess.Popen(
        [sys.executable, *command],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(base, process)
        with requests.Session() as session:
            ids = [
                session.post(f"{base}/otp/start", json={"phone": phone(i)}, headers=HEADERS).json()[
                    "id"
                ]
                for i in range(concurrent)
            ]
        burst(base, ids, concurrent, rounds)
        time.sleep(1)
        return process_tree_memory(process.pid)
    finally:
        process.terminate()
        process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrent", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    termii = ThreadingHTTPServer(("127.0.0.1", 0), TermiiStandIn)
    threading.Thread(target=termii.serve_forever, daemon=True).start()
    configurations: dict[str, dict[str, object]] = {
        "as shipped": {},
        "argon2 unbounded (OTPSVC_ARGON2_CONCURRENCY=12)": {"OTPSVC_ARGON2_CONCURRENCY": "12"},
        "glibc defaults (no MALLOC_* settings)": {"glibc_defaults": True},
        "neither (as before)": {"glibc_defaults": True, "OTPSVC_ARGON2_CONCURRENCY": "12"},
    }
    print(f"{args.concurrent} concurrent wrong checks, {args.rounds} bursts, otpsvc serve")
    print("| configuration | peak (all processes) | held after the burst |")
    print("|---|---|---|")
    for name, overrides in configurations.items():
        with RedisServer() as redis_server:
            peak, now = measure(
                redis_server.url, termii.server_address[1], args.concurrent, args.rounds,
                **overrides,  # type: ignore[arg-type]
            )  # fmt: skip
        print(f"| {name} | {peak / 1024:.0f} MiB | {now / 1024:.0f} MiB |")
    termii.shutdown()


if __name__ == "__main__":
    main()
