"""``kill -HUP`` of ``otpsvc serve`` reads the client file again under load: no request fails,
the new policy applies, and a bad file is refused and logged while the last good one serves."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from otpsvc.dev.redis_server import free_port
from tests.conftest import KEY_A
from tests.fakes.termii import FakeTermii
from tests.test_cli import wait_until_serving
from tests.test_serving import serve_env

AUTH = {"Authorization": f"Bearer {KEY_A}"}


def serve_logged(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``otpsvc serve`` with ``env``, its output in ``log``, once it answers."""
    with log.open("wb") as sink:
        server = subprocess.Popen(
            [sys.executable, "-m", "otpsvc", "serve"], env=env, stdout=sink, stderr=sink
        )
    try:
        wait_until_serving(f"http://127.0.0.1:{env['PORT']}", server)
    except BaseException:
        server.kill()
        server.wait(30)
        raise
    return server


def test_hup_reloads_the_client_file_under_load(
    redis_url, redis_client, termii: FakeTermii, tmp_path: Path
):
    clients = tmp_path / "clients.toml"
    clients.write_text("[clients.client-a]\ncode_length = 6\n")
    log = tmp_path / "server.log"
    port = free_port()
    env = serve_env(redis_url, termii, port, OTPSVC_CLIENTS_FILE=str(clients), WEB_CONCURRENCY="2")
    termii.delay = 0.2
    base = f"http://127.0.0.1:{port}"
    server = serve_logged(env, log)
    try:
        failures: list[str] = []
        lengths: list[int] = []
        stop = threading.Event()

        def load(thread: int) -> None:
            session = requests.Session()
            n = 0
            while not stop.is_set():
                n += 1
                phone = f"+234803{thread}{n:06d}"
                try:
                    answer = session.post(
                        f"{base}/otp/start", json={"phone": phone}, headers=AUTH, timeout=30
                    )
                except requests.RequestException as exc:
                    failures.append(type(exc).__name__)
                    continue
                if answer.status_code != 201:
                    failures.append(str(answer.status_code))
                    continue
                lengths.append(len(termii.code_for(phone)))

        threads = [threading.Thread(target=load, args=(t,), daemon=True) for t in range(4)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while len(lengths) < 10:
            assert time.monotonic() < deadline
            time.sleep(0.05)

        clients.write_text("[clients.client-a]\ncode_length = 8\n")
        server.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while not lengths or lengths[-1] != 8:
            assert time.monotonic() < deadline, "the new code length never applied"
            time.sleep(0.05)
        switched = len(lengths)

        clients.write_text("[clients.client-a]\ncode_length = 12\n")
        server.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while "refused on reload, the workers keep the last good ones" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.05)
        time.sleep(3)  # the workers the bad reload started serve for a while
        stop.set()
        for thread in threads:
            thread.join(30)

        assert failures == []
        assert server.poll() is None
        after = lengths[switched:]
        assert len(after) >= 10
        assert set(after) == {8}
        assert "clients.client-a.code_length" in log.read_text()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(40)


def test_a_bad_secret_file_and_hup_leave_the_server_serving(
    redis_url, redis_client, termii: FakeTermii, tmp_path: Path
):
    """A corrupt ``OTPSVC_API_KEYS_FILE`` (one bad ``kubectl apply`` of a Secret volume) plus
    HUP: the master refuses it and says why; the new workers, and one that replaces a worker
    killed afterwards, load the last good settings, so the server keeps serving."""
    import os

    from tests.conftest import KEY_B

    keys = tmp_path / "api-keys"
    keys.write_text(f"client-a:{KEY_A},client-b:{KEY_B}\n")
    log = tmp_path / "server.log"
    port = free_port()
    env = serve_env(redis_url, termii, port, OTPSVC_API_KEYS_FILE=str(keys), WEB_CONCURRENCY="2")
    del env["OTPSVC_API_KEYS"]
    base = f"http://127.0.0.1:{port}"
    server = serve_logged(env, log)
    try:
        keys.write_text("client-a short\n")
        server.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while "refused on reload" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.05)
        time.sleep(2)  # the workers the reload started are up
        workers = subprocess.run(
            ["pgrep", "-P", str(server.pid)], capture_output=True, text=True, check=False
        ).stdout.split()
        assert workers, "no gunicorn worker found"
        os.kill(int(workers[0]), signal.SIGKILL)
        time.sleep(2)  # gunicorn forks its replacement
        for i in range(6):
            answer = requests.post(
                f"{base}/otp/start", json={"phone": f"+2348035{i:06d}"}, headers=AUTH, timeout=30
            )
            assert answer.status_code == 201, answer.text
        assert server.poll() is None
        text = log.read_text()
        assert "OTPSVC_API_KEYS" in text.split("refused on reload", 1)[1]
        assert "client file" not in text.split("refused on reload", 1)[1].split("\n", 1)[0]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(40)
