"""`otpsvc dev`: runs with nothing but the package, prints a working key, cleans up after itself."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from otpsvc.dev.redis_server import free_port


def wait_for(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=1)
            return
        except requests.ConnectionError:
            time.sleep(0.1)
    raise TimeoutError(url)


def start_dev(
    output: Any, state: Path | None = None, *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """``otpsvc dev`` as the README's first command runs it (no OTPSVC_* setting of this
    environment), on a free port, its output to ``output``: (the process, its base URL) once it
    answers. ``state`` is its state directory (where it keeps its key; a new one by default)."""
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("OTPSVC_")}
    environment["XDG_STATE_HOME"] = str(state or tempfile.mkdtemp(prefix="otpsvc-dev-state-"))
    process = subprocess.Popen(
        [sys.executable, "-m", "otpsvc", "dev", "--port", str(port), *args],
        stdout=output,
        stderr=subprocess.STDOUT,
        env={**environment, **(env or {})},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(base + "/healthz")
    except BaseException:
        process.kill()
        process.wait(15)
        raise
    return process, base


def test_dev_mode_serves_a_full_verification(tmp_path: Path):
    """Start, read the code from the dev inbox, check it: approved; SIGTERM stops its Redis too."""
    out = (tmp_path / "out.txt").open("w+")
    process, base = start_dev(out)
    try:
        out.flush()
        printed = Path(out.name).read_text()
        key = re.search(r"API key: (\S+)", printed).group(1)
        assert f"Authorization: Bearer {key}" in printed
        auth = {"Authorization": f"Bearer {key}"}
        started = requests.post(
            base + "/otp/start", json={"phone": "+2348031234567"}, headers=auth, timeout=10
        )
        assert started.status_code == 201
        calls = requests.get(base + "/dev/calls", headers=auth, timeout=10).json()["calls"]
        assert calls[0]["phone"] == "+234*******567"
        code = calls[0]["code"]
        words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
        assert ", ".join(words[int(d)] for d in code) in calls[0]["text"]
        checked = requests.post(
            base + "/otp/check",
            json={"id": started.json()["id"], "code": code},
            headers=auth,
            timeout=10,
        )
        assert checked.json()["valid"] is True
        by_number = requests.get(
            base + "/dev/calls?phone=%2B2348031234567", headers=auth, timeout=10
        )
        assert by_number.json()["calls"][0]["code"] == code
        forged = requests.post(
            base + "/webhooks/console/t0ken-SEEN-in-a-log/status",
            json={"status": "busy"},
            timeout=10,
        )
        assert forged.status_code == 401
        children = subprocess.run(
            ["pgrep", "-P", str(process.pid)], capture_output=True, text=True
        ).stdout.split()
        assert len(children) == 1  # the bundled redis-server
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(15)
    printed = Path(out.name).read_text()
    assert code not in printed
    # The dev server's access log names requests without a full number or a token (the banner's
    # example commands name an example number).
    access = "\n".join(line for line in printed.splitlines() if " HTTP/1.1" in line)
    assert "2348031234567" not in access
    assert "t0ken-SEEN-in-a-log" not in access
    assert "/dev/calls?phone=[number]" in access
    assert "/webhooks/console/[token]/status" in access
    redis_pid = int(children[0])
    assert not Path(f"/proc/{redis_pid}").exists()


def test_sigterm_stops_dev_mode_and_its_redis(tmp_path: Path):
    """A process manager stops with SIGTERM, not Ctrl-C: the bundled redis-server stops too,
    instead of being left running without its parent."""
    process, _ = start_dev(subprocess.DEVNULL)
    try:
        children = subprocess.run(
            ["pgrep", "-P", str(process.pid)], capture_output=True, text=True
        ).stdout.split()
        assert len(children) == 1
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(15)
    status = Path(f"/proc/{children[0]}/status")

    def stopped() -> bool:
        # Gone, or exited and waiting to be reaped: either way no longer serving.
        return not status.exists() or "zombie" in status.read_text()

    deadline = time.monotonic() + 10
    while not stopped() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stopped()


def _key_of(path: Path) -> str:
    found = re.search(r"API key: (\S+)", path.read_text())
    assert found, path.read_text()
    return found.group(1)


def test_the_dev_key_stays_the_same_across_restarts(tmp_path: Path):
    """A developer's scripts keep working after a restart: the key is kept (readable by its
    user only) and printed again; --new-key makes another."""
    keys = []
    for args in ((), (), ("--new-key",)):
        out = tmp_path / f"out{len(keys)}.txt"
        with out.open("w+") as sink:
            process, base = start_dev(sink, tmp_path, *args)
            try:
                sink.flush()
                keys.append(_key_of(out))
                auth = {"Authorization": f"Bearer {keys[-1]}"}
                assert requests.get(base + "/dev/calls", headers=auth, timeout=10).ok
            finally:
                process.send_signal(signal.SIGTERM)
                process.wait(15)
    assert keys[0] == keys[1] != keys[2]
    kept = tmp_path / "otpsvc" / "dev-api-key"
    assert kept.read_text().strip() == keys[2]
    assert kept.stat().st_mode & 0o777 == 0o600


def test_dev_mode_limits_suit_a_developer_and_an_answered_call_completes(tmp_path: Path):
    """Eight test runs with one account in a row are not refused (production's limits allow
    five calls an hour per account), the banner says the limits are dev ones, and an answered call's
    delivery becomes completed instead of staying queued."""
    out = tmp_path / "out.txt"
    with out.open("w+") as sink:
        process, base = start_dev(sink, tmp_path)
        try:
            sink.flush()
            printed = out.read_text()
            assert "Dev limits" in printed
            auth = {"Authorization": f"Bearer {_key_of(out)}"}
            for i in range(8):
                body = {"phone": f"+23480312345{i:02d}", "end_user": {"user_id": "me"}}
                started = requests.post(base + "/otp/start", json=body, headers=auth, timeout=10)
                assert started.status_code == 201, started.text
                vid = started.json()["id"]
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                view = requests.get(base + f"/otp/{vid}", headers=auth, timeout=10).json()
                if view["delivery"]["status"] == "completed":
                    break
                time.sleep(0.1)
            assert view["delivery"]["status"] == "completed"
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(15)
