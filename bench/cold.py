"""Code that runs right after about 10 ms of something else is slower than the same code run back
to back: ``.venv/bin/python bench/cold.py`` (about 20 s).

A fixed piece of request-like work (JSON in and out, an HMAC) is timed, in thread CPU, right
after each of:

- nothing (the work back to back, as a bare app's requests run);
- one argon2id run at the default 16 MiB, t=1;
- argon2id at 64 KiB with as many passes as take the same time (little memory, same duration);
- a pure Python loop of the same time (no memory to speak of, no system calls);
- a 10 ms sleep (no work at all: the core runs other processes meanwhile).

If argon2's memory were what slows the work down, only the 16 MiB run would. Each of otpsvc's
start and check runs one argon2 of about 10 ms, so its own code always runs in the second case;
``bench/capacity.py`` therefore also measures a bare Flask app that runs the same argon2.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import statistics
import time
from collections.abc import Callable

from argon2.low_level import Type, hash_secret_raw

ROUNDS = 3
SAMPLES = 60
TARGET_SECONDS = 0.010
PAYLOAD = {"id": "0f1e2d3c4b5a6978", "phone": "+2348031234567", "status": "pending", "n": 1}


def work() -> None:
    for _ in range(20):
        text = json.dumps(PAYLOAD)
        json.loads(text)
        hmac.new(b"k" * 32, text.encode(), hashlib.sha256).digest()


def argon2(memory_kib: int, passes: int) -> None:
    hash_secret_raw(b"x" * 32, b"cold-bench-salt0", passes, memory_kib, 1, 32, Type.ID)


def python_loop(n: int) -> None:
    total = 0
    for i in range(n):
        total += i


def calibrate(run: Callable[[int], None], start: int) -> int:
    """The argument of ``run`` that takes about TARGET_SECONDS of CPU."""
    n = start
    while True:
        began = time.thread_time()
        run(n)
        took = time.thread_time() - began
        if took >= TARGET_SECONDS * 0.95:
            return n
        n = max(n + 1, int(n * TARGET_SECONDS / max(took, 1e-6)))


def main() -> None:
    passes_64k = calibrate(lambda n: argon2(64, n), 1)
    loop_n = calibrate(python_loop, 10_000)
    before: dict[str, Callable[[], None]] = {
        "nothing": lambda: None,
        "argon2 16 MiB, t=1": lambda: argon2(16384, 1),
        f"argon2 64 KiB, t={passes_64k}": lambda: argon2(64, passes_64k),
        "a Python loop": lambda: python_loop(loop_n),
        "a 10 ms sleep": lambda: time.sleep(TARGET_SECONDS),
    }
    medians: dict[str, list[float]] = {name: [] for name in before}
    for _ in range(ROUNDS):
        for name, run in before.items():
            took = []
            for _ in range(SAMPLES):
                run()
                began = time.thread_time()
                work()
                took.append(time.thread_time() - began)
            medians[name].append(statistics.median(took) * 1e6)
    base = statistics.median(medians["nothing"])
    print("the same work (thread CPU, median of each round), right after:")
    for name, values in medians.items():
        figures = ", ".join(f"{v:.0f}" for v in values)
        print(f"  {name:<22} {figures} µs  ({statistics.median(values) / base:.2f} times)")


if __name__ == "__main__":
    main()
