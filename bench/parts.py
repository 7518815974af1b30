"""Where a pair's CPU outside argon2 goes: ``.venv/bin/python bench/parts.py`` (about 30 s).

A pair (a start, then a check with the right code) is run by calling the WSGI app directly, with
no HTTP server, on a bundled redis-server and a local stand-in for Termii (in its own process, so
its CPU is not counted). Printed, in thread CPU per pair, in one run:

- the bare Flask app of ``bench/floor_app.py`` (two JSON requests);
- the same bare app with one argon2 run per request (at otpsvc's parameters): what it spends
  outside argon2 is the floor that, like otpsvc, runs between argon2 runs (``bench/cold.py``:
  such code is slower than code run back to back);
- otpsvc's pair, its argon2 runs (as ``otpsvc_argon2_cpu_seconds_total`` counts them) and what is
  left outside them, as a multiple of each floor;
- that remainder part by part: each part is timed where it is called (the outermost call only).

Other argon2 parameters come from the environment, as otpsvc's own settings:
``OTPSVC_ARGON2_MEMORY_KIB=1024 OTPSVC_ARGON2_TIME_COST=10 .venv/bin/python bench/parts.py``.

gunicorn's own share (HTTP parsing, the accept loop) is not here: ``bench/capacity.py`` measures
the pair under gunicorn.
"""

from __future__ import annotations

import functools
import io
import json
import multiprocessing
import os
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from typing import Any

import floor_app  # bench/floor_app.py
import redis.client

import bench  # bench/bench.py, beside this file
from otpsvc.dev.redis_server import RedisServer

PAIRS = 300


def _environ(path: str, body: dict[str, Any], key: str | None) -> dict[str, Any]:
    data = json.dumps(body).encode()
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8080",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(data)),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(data),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    if key:
        environ["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    return environ


def call(
    app: Any,
    path: str,
    body: dict[str, Any],
    key: str | None = None,
    headers: list[tuple[str, str]] | None = None,
) -> Any:
    """POST ``body`` to the WSGI ``app``; its JSON answer (its headers into ``headers``)."""
    status: list[str] = []

    def start_response(line: str, sent: list[tuple[str, str]], exc_info: Any = None) -> None:
        status.append(line)
        if headers is not None:
            headers.extend(sent)

    out = b"".join(app(_environ(path, body, key), start_response))
    if not status[0].startswith("20"):
        raise RuntimeError(f"{path} answered {status[0]}: {out!r}")
    return json.loads(out)


def _serve_termii(ports: Any, codes: Any) -> None:
    bench.TermiiStandIn.codes = codes
    server = ThreadingHTTPServer(("127.0.0.1", 0), bench.TermiiStandIn)
    ports.put(server.server_port)
    server.serve_forever()


class Parts:
    """Thread CPU of chosen functions, outermost calls only."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()
        self._depth = 0

    def time(self, owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self._depth:
                return original(*args, **kwargs)
            self._depth += 1
            began = time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[label] += time.thread_time() - began
                self.calls[label] += 1
                self._depth -= 1

        setattr(owner, name, timed)


def per_pair(run: Callable[[int], None], first: int) -> float:
    began = time.thread_time()
    for i in range(first, first + PAIRS):
        run(i)
    return (time.thread_time() - began) / PAIRS * 1000


def main() -> None:
    codes = multiprocessing.Manager().dict()
    ports: Any = multiprocessing.Queue()
    termii = multiprocessing.Process(target=_serve_termii, args=(ports, codes), daemon=True)
    termii.start()
    port = ports.get()
    with RedisServer() as server:
        os.environ.update(bench.service_env(server.url, port))
        from otpsvc import metrics
        from otpsvc.api import otp
        from otpsvc.app import create_app
        from otpsvc.core import service
        from otpsvc.telemetry import TracedScript
        from otpsvc.voice.base import HttpProvider

        app = create_app()

        def pair(i: int) -> None:
            phone = bench.phone(i)
            started = call(app, "/otp/start", {"phone": phone}, bench.API_KEY)
            code = codes[phone.lstrip("+")]
            checked = call(app, "/otp/check", {"id": started["id"], "code": code}, bench.API_KEY)
            assert checked["valid"]

        floor_argon2: list[float] = []

        def bare(i: int) -> None:
            sent: list[tuple[str, str]] = []
            started = call(floor_app.app, "/otp/start", {"phone": "+2348031234567"}, None, sent)
            call(floor_app.app, "/otp/check", {"id": started["id"], "code": "1"}, None, sent)
            floor_argon2.extend(float(v) for k, v in sent if k == "X-Argon2-CPU-Seconds")

        def argon2_seconds() -> float:
            return sum(
                metrics.ARGON2_CPU.labels(operation)._value.get()
                for operation in ("hash", "verify")
            )

        for i in range(30):  # warm up: scripts loaded, connections open
            pair(i)
            bare(i)
        warm = per_pair(bare, 0)
        # The same bare app with one argon2 run per request, at otpsvc's parameters.
        params = app.extensions["otpsvc"].settings.argon2
        floor_app.ARGON2_KIB, floor_app.ARGON2_TIME_COST = params.memory_kib, params.time_cost
        floor = per_pair(bare, 0) - sum(floor_argon2) / PAIRS * 1000
        floor_app.ARGON2_KIB = 0
        print(f"bare app: {warm:.3f} ms a pair; with argon2, outside it: {floor:.3f} ms")
        before = argon2_seconds()
        total = per_pair(pair, 1000)
        argon2 = (argon2_seconds() - before) / PAIRS * 1000
        outside = total - argon2
        print(
            f"otpsvc: a pair {total:.2f} ms, argon2 {argon2:.2f}, outside argon2 {outside:.2f} ms "
            f"= {outside / warm:.1f} times the bare app, {outside / floor:.1f} times the bare "
            "app with argon2"
        )

        parts = Parts()
        parts.time(TracedScript, "__call__", "Lua script calls")
        parts.time(redis.client.Pipeline, "execute", "Redis pipelines")
        parts.time(HttpProvider, "post", "provider HTTP request")
        parts.time(otp, "load", "marshmallow loads, phone parsing included")
        parts.time(otp, "jsonify", "JSON responses")
        parts.time(service.Keyring, "hash_code", "argon2 hash")
        parts.time(service.Keyring, "verify_code", "argon2 verify")
        total = per_pair(pair, 5000)
        print(f"part by part (a pair: {total:.2f} ms):")
        for label, seconds in sorted(parts.seconds.items(), key=lambda item: -item[1]):
            calls = parts.calls[label] / PAIRS
            print(f"  {seconds / PAIRS * 1000:6.3f} ms  {calls:4.1f} calls  {label}")
        rest = total - sum(parts.seconds.values()) / PAIRS * 1000
        print(f"  {rest:6.3f} ms              the rest: Flask, hooks, auth, service logic, hashes")


if __name__ == "__main__":
    main()
