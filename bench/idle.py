"""What idle event workers cost Redis: ``.venv/bin/python bench/idle.py`` (~2 minutes).

Runs 1, then 2, then 4 ``otpsvc worker`` processes (a client with a webhook, a ladder
configured) against a Redis with nothing to do, and prints the commands a second Redis
processed (``INFO stats``, ``total_commands_processed``) and each worker's CPU. An idle worker's
cost must not grow with the 256 event shards, and should grow no more than linearly with workers.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import redis

from otpsvc.dev.redis_server import RedisServer

ENV = {
    "OTPSVC_SECRET_KEY": "bench-secret-0123456789abcdef0123456789",
    "OTPSVC_API_KEYS": "webapp:bench-api-key-0123456789abcdefghij",
    "OTPSVC_PROVIDERS": "termii",
    "OTPSVC_TERMII_API_KEY": "bench-termii-key",
    "OTPSVC_ALLOWED_COUNTRIES": "NG",
    "OTPSVC_LADDER": "voice:termii/45,voice:termii",
    "OTPSVC_EVENT_WEBHOOKS": "webapp=http://127.0.0.1:9/hooks",
    "OTPSVC_EVENT_WEBHOOK_SECRETS": "webapp=whsec_"
    + "YmVuY2gtc2VjcmV0LTAxMjM0NTY3ODlhYmNkZWZnaGlqa2xtbm9w",
    "OTPSVC_LOG_LEVEL": "WARNING",
}


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()  # noqa: SIM115
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(url: str, workers: int, seconds: float) -> tuple[float, float]:
    """(Redis commands a second, CPU % of one worker) with ``workers`` idle workers."""
    env = {**os.environ, **ENV, "OTPSVC_REDIS_URL": url}
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "otpsvc", "worker"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(workers)
    ]
    client = redis.Redis.from_url(url)
    try:
        time.sleep(4)  # start-up: the scripts, the consumer groups
        began = time.monotonic()
        commands = int(client.info("stats")["total_commands_processed"])
        cpu = sum(cpu_seconds(p.pid) for p in processes)
        time.sleep(seconds)
        elapsed = time.monotonic() - began
        commands = int(client.info("stats")["total_commands_processed"]) - commands - 1
        cpu = sum(cpu_seconds(p.pid) for p in processes) - cpu
        return commands / elapsed, 100 * cpu / elapsed / workers
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    print("| idle workers | Redis commands a second | CPU of one worker |")
    print("|---|---|---|")
    for workers in (1, 2, 4):
        with RedisServer() as server:
            rate, cpu = measure(server.url, workers, args.seconds)
        print(f"| {workers} | {rate:.0f} | {cpu:.1f} % |")


if __name__ == "__main__":
    main()
