"""``otpsvc serve`` as production runs it, with a voice provider that takes its time.

Each test runs the real server (gunicorn, the shipped gunicorn.conf.py: gthread workers) against
the local Termii stand-in slowed down or hanging, and asserts orderings and outcomes, not timings.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from otpsvc.dev.redis_server import free_port
from tests.conftest import KEY_A, TERMII_KEY, base_env, wrong_code
from tests.fakes.termii import FakeTermii
from tests.test_cli import wait_until_serving

AUTH = {"Authorization": f"Bearer {KEY_A}"}


class Served:
    def __init__(self, base: str, process: subprocess.Popen[bytes]) -> None:
        self.base = base
        self.process = process

    def start(self, phone: str) -> requests.Response:
        return requests.post(
            f"{self.base}/otp/start", json={"phone": phone}, headers=AUTH, timeout=30
        )

    def check(self, verification_id: str, code: str) -> requests.Response:
        body = {"id": verification_id, "code": code}
        return requests.post(f"{self.base}/otp/check", json=body, headers=AUTH, timeout=30)


def serve_env(redis_url: str, termii: FakeTermii, port: int, **overrides: str) -> dict[str, str]:
    """The environment of ``otpsvc serve`` with its shipped settings (not the in-process
    tests' thread counts), calling the local Termii, on ``port`` of the loopback."""
    shipped = {
        k: v
        for k, v in base_env(redis_url).items()
        if k not in ("OTPSVC_WORKER_THREADS", "OTPSVC_PROVIDER_CONCURRENCY")
    }
    return {
        **os.environ,
        **shipped,
        "OTPSVC_PROVIDERS": "termii",
        "OTPSVC_TERMII_BASE_URL": termii.url,
        "OTPSVC_TERMII_API_KEY": TERMII_KEY,
        "PORT": str(port),
        "HOST": "127.0.0.1",
        **overrides,
    }


@pytest.fixture
def serve(
    redis_url: str, redis_client: object, termii: FakeTermii
) -> Iterator[Callable[..., Served]]:
    """Start ``otpsvc serve`` with the shipped settings (overrides apply); stopped after."""
    processes: list[subprocess.Popen[bytes]] = []

    def run(**overrides: str) -> Served:
        port = free_port()
        env = serve_env(
            redis_url,
            termii,
            port,
            OTPSVC_PROVIDER_READ_TIMEOUT="10",
            OTPSVC_LOG_LEVEL="WARNING",
            **overrides,
        )
        process = subprocess.Popen(
            [sys.executable, "-m", "otpsvc", "serve"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        processes.append(process)
        base = f"http://127.0.0.1:{port}"
        wait_until_serving(base, process)
        return Served(base, process)

    yield run
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(40)
            except subprocess.TimeoutExpired:
                process.kill()


def phone(i: int) -> str:
    return f"+234803{500_000 + i:07d}"


def wait_for(condition: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def test_a_check_is_answered_before_any_start_waiting_on_the_provider(serve, termii: FakeTermii):
    """With the provider taking 0.4 s, a check sent while 8 starts wait on it completes before
    any of those starts does: a person typing a code never waits for someone else's call."""
    served = serve()
    first = served.start(phone(0)).json()
    code = termii.last_code()
    termii.delay = 0.4
    finished: list[tuple[str, float, int]] = []
    lock = threading.Lock()

    def timed(label: str, call: Callable[[], requests.Response]) -> None:
        status = call().status_code
        with lock:
            finished.append((label, time.monotonic(), status))

    with ThreadPoolExecutor(9) as pool:
        for i in range(1, 9):
            pool.submit(timed, "start", lambda i=i: served.start(phone(i)))
        wait_for(lambda: len(termii.calls) >= 1 + 8)
        pool.submit(timed, "check", lambda: served.check(first["id"], code))
    order = [label for label, _, _ in sorted(finished, key=lambda f: f[1])]
    assert order[0] == "check", finished
    assert all(status in (201, 503) for label, _, status in finished if label == "start")
    assert [status for label, _, status in finished if label == "check"] == [200]


def test_the_bulkhead_refuses_a_start_past_its_limit_fast_and_checks_go_on(
    serve, termii: FakeTermii
):
    """One worker, OTPSVC_PROVIDER_CONCURRENCY=2, the provider hanging: two starts wait on it,
    the third waits for a slot no longer than OTPSVC_PROVIDER_SLOT_WAIT (2 s) and is refused
    with 503 providers_busy and Retry-After (no call), and a check still passes."""
    served = serve(WEB_CONCURRENCY="1", OTPSVC_PROVIDER_CONCURRENCY="2")
    first = served.start(phone(0)).json()
    code = termii.last_code()
    termii.hang = True
    with ThreadPoolExecutor(2) as pool:
        waiting = [pool.submit(served.start, phone(i)) for i in (1, 2)]
        wait_for(lambda: len(termii.calls) >= 3)
        began = time.monotonic()
        refused = served.start(phone(3))
        refused_after = time.monotonic() - began
        assert refused.status_code == 503
        assert refused.json()["code"] == "providers_busy"
        assert refused.headers["Retry-After"] == "1"
        # Refused after the slot wait, not after the provider's 10 s read timeout.
        assert refused_after < 5
        assert len(termii.calls) == 3
        assert served.check(first["id"], wrong_code(code)).json()["valid"] is False
        assert served.check(first["id"], code).json()["valid"] is True
        assert requests.get(f"{served.base}/healthz", timeout=5).status_code == 200
        termii.hang = False
        termii._release.set()
        assert all(f.result().status_code == 201 for f in waiting)
    pytest.FIGURES["bulkhead, provider hanging"] = (  # type: ignore[attr-defined]
        f"start past the limit refused in {refused_after * 1000:.0f} ms (503 providers_busy); "
        "checks and /healthz answered meanwhile"
    )


def test_a_start_waits_briefly_for_a_slot_instead_of_being_refused(serve, termii: FakeTermii):
    """One worker with two provider slots and a provider that takes 0.5 s: four starts at once
    all place their call; the two that found the slots taken waited for one to free instead of
    being refused while the provider was about to answer."""
    served = serve(WEB_CONCURRENCY="1", OTPSVC_PROVIDER_CONCURRENCY="2")
    termii.delay = 0.5
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(served.start, [phone(40 + i) for i in range(4)]))
    assert [a.status_code for a in answers] == [201] * 4
    assert len(termii.calls) == 4


def test_slow_clients_do_not_starve_the_probes(serve):
    """Four connections that send one header line every half second (slowloris) against one
    worker: /healthz still answers, because each holds only one of the worker's threads."""
    served = serve(WEB_CONCURRENCY="1")
    port = int(served.base.rsplit(":", 1)[1])
    slow = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
    try:
        for sock in slow:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        answered = []
        for i in range(3):
            for sock in slow:
                sock.sendall(f"X-Slow-{i}: 1\r\n".encode())
            answered.append(requests.get(f"{served.base}/healthz", timeout=5).status_code)
            time.sleep(0.5)
        assert answered == [200, 200, 200]
    finally:
        for sock in slow:
            sock.close()


def test_sigterm_lets_a_start_waiting_on_the_provider_finish(serve, termii: FakeTermii):
    """SIGTERM while a start waits 1.5 s on the provider: the start completes with 201 and the
    server exits 0 (gunicorn's graceful drain; the Deployment's preStop pause covers the
    requests kube-proxy still sends before SIGTERM)."""
    served = serve(WEB_CONCURRENCY="1")
    termii.delay = 1.5
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(served.start, phone(1))
        wait_for(lambda: len(termii.calls) >= 1)
        served.process.send_signal(signal.SIGTERM)
        assert in_flight.result().status_code == 201
    assert served.process.wait(40) == 0


def _limit_mib(manifest: str) -> int:
    """The API container's memory limit in the shipped Deployment, in MiB."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / manifest).read_text()
    limits = text.split("limits:", 1)[1]
    found = re.search(r"memory:\s*(\d+)Mi", limits)
    assert found, "no memory limit in the Deployment"
    return int(found.group(1))


def test_a_burst_of_checks_stays_under_the_pods_memory_limit(serve):
    """24 concurrent wrong checks (each an argon2 run of 16 MiB) against the shipped server,
    three times: the peak resident memory of the master and its workers together stays under
    the Deployment's memory limit, and the server gives most of it back afterwards (argon2 runs
    bounded per process, glibc's mmap threshold fixed by ``otpsvc serve``)."""
    from otpsvc.dev.monitor import process_tree_memory

    served = serve(OTPSVC_MAX_CHECK_ATTEMPTS="10")
    ids = [served.start(phone(80 + i)).json()["id"] for i in range(24)]
    for _ in range(3):
        together = threading.Barrier(24)

        def wrong_check(vid: str, together: threading.Barrier = together) -> int:
            together.wait()
            return served.check(vid, "000000").status_code

        with ThreadPoolExecutor(24) as pool:
            assert set(pool.map(wrong_check, ids)) == {200}
    time.sleep(1)
    peak, held = process_tree_memory(served.process.pid)
    limit = _limit_mib("deploy/kubernetes/deployment.yaml")
    assert peak / 1024 < limit, f"peak {peak / 1024:.0f} MiB, limit {limit} MiB"
    assert held / 1024 < 0.8 * limit
    pytest.FIGURES["memory, 24 concurrent checks"] = (  # type: ignore[attr-defined]
        f"peak {peak / 1024:.0f} MiB, {held / 1024:.0f} MiB held after (limit {limit} MiB)"
    )


def test_the_server_removes_its_metrics_directory_when_it_exits(serve, tmp_path):
    """Each ``otpsvc serve`` made a metrics directory in the temporary directory and left it
    behind; it is removed when the server exits."""
    served = serve(TMPDIR=str(tmp_path))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("otpsvc-metrics-")]
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(40) == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("otpsvc-metrics-")]


def test_the_image_healthcheck_judges_the_server_or_the_worker(serve, tmp_path):
    """``python -m otpsvc.healthcheck`` (the image's HEALTHCHECK): healthy while the server's
    /healthz answers, or, in a worker's container, while its heartbeat is fresh; unhealthy
    with neither, or with a stale heartbeat (a worker container was always unhealthy)."""
    import os

    from otpsvc.dev.redis_server import free_port

    def check(port: str, *heartbeat: str) -> int:
        env = {**os.environ, "PORT": port}
        return subprocess.run(
            [sys.executable, "-m", "otpsvc.healthcheck", *heartbeat], env=env, timeout=60
        ).returncode

    served = serve()
    assert check(served.base.rsplit(":", 1)[1], str(tmp_path / "none")) == 0
    nothing = str(free_port())
    beat = tmp_path / "worker-alive"
    assert check(nothing, str(beat)) == 1
    beat.touch()
    assert check(nothing, str(beat)) == 0
    stale = time.time() - 60
    os.utime(beat, (stale, stale))
    assert check(nothing, str(beat)) == 1
