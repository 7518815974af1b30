"""What a piece of work costs, for the tests and the benchmarks: the commands it sends to Redis
(MONITOR), and the memory of a server's processes.

Commands that Lua scripts run inside Redis are not counted: one EVALSHA is one round trip.
MONITOR slows a server down, so never point it at production.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import redis

_SENTINEL = "otpsvc-monitor-done"


def commands_sent(redis_url: str, action: Callable[[], object]) -> list[str]:
    """The names of the top-level commands Redis received while ``action`` ran."""
    seen: list[str] = []
    ready = threading.Event()
    marker = redis.Redis.from_url(redis_url, single_connection_client=True)
    marker.ping()  # connected before counting starts, so its handshake is not counted
    listener = redis.Redis.from_url(redis_url, decode_responses=True)

    def listen() -> None:
        with listener.monitor() as monitor:  # type: ignore[no-untyped-call]
            ready.set()
            while True:
                command = monitor.next_command()
                if _SENTINEL in command["command"]:
                    return
                if command.get("client_type") != "lua":
                    seen.append(str(command["command"]).split()[0].upper())

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    try:
        if not ready.wait(5):
            raise TimeoutError("MONITOR did not start")
        action()
    finally:
        marker.echo(_SENTINEL)
        thread.join(10)
        marker.close()
        listener.close()
    return seen


def round_trips(redis_url: str, action: Callable[[], object]) -> int:
    """How many requests Redis read while ``action`` ran: one per round trip, however many
    commands a pipeline packed into it (``total_reads_processed`` of ``INFO stats``, Redis 6.2+).
    The two ``INFO`` calls that measure are not counted."""
    with redis.Redis.from_url(redis_url, single_connection_client=True) as probe:
        probe.ping()
        before = int(probe.info("stats")["total_reads_processed"])
        action()
        after = int(probe.info("stats")["total_reads_processed"])
    return after - before - 1


def process_tree_memory(root: int) -> tuple[int, int]:
    """(peak, now) resident KiB of process ``root`` and its children (a gunicorn master and its
    workers), summed: each process's high-water mark (``VmHWM``) and current size (``VmRSS``)."""
    children = subprocess.run(  # noqa: S603 - a fixed command on a pid of ours
        ["pgrep", "-P", str(root)],  # noqa: S607
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    peak = now = 0
    for pid in [str(root), *children]:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        peak += int(fields.get("VmHWM", "0 kB").split()[0])
        now += int(fields.get("VmRSS", "0 kB").split()[0])
    return peak, now
