"""The container image, built by ``.ci/run`` with podman, run as production runs it: a read-only
root, an in-memory /tmp, a real Redis and a provider stand-in on this machine.

Runs when ``OTPSVC_TEST_IMAGE`` names the built image (``.ci/run`` sets it, and
``OTPSVC_REQUIRE_IMAGE`` so that a missing podman fails instead of skipping)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest
import requests

from otpsvc.dev.redis_server import free_port
from tests.conftest import KEY_A, PHONE, fake_termii_env
from tests.fakes.termii import FakeTermii

IMAGE = os.environ.get("OTPSVC_TEST_IMAGE", "")


@pytest.fixture
def podman() -> str:
    path = shutil.which("podman")
    if not IMAGE or path is None:
        if os.environ.get("OTPSVC_REQUIRE_IMAGE"):
            pytest.fail("OTPSVC_TEST_IMAGE and podman are required here (.ci/run builds it)")
        pytest.skip("no image to test: .ci/run builds one with podman (OTPSVC_TEST_IMAGE)")
    return path


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=check, timeout=60)


def test_the_image_serves_read_only_as_an_unprivileged_user_and_stops_cleanly(
    podman: str, redis_url: str, redis_client: object, termii: FakeTermii, tmp_path
):
    """/healthz and /readyz 200, a start 201, uid 10001, gunicorn as PID 1, the HEALTHCHECK
    healthy, SIGTERM stops it within seconds with exit 0, and not one ERROR line in its log."""
    port = free_port()
    env = {**fake_termii_env(redis_url, termii), "PORT": str(port), "HOST": "127.0.0.1"}
    env_file = tmp_path / "env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    name = f"otpsvc-test-{port}"
    in_container_tmp = "/tmp"  # noqa: S108 - the container's own, an in-memory tmpfs
    run(podman, "run", "-d", "--name", name, "--network", "host", "--read-only",
        "--tmpfs", in_container_tmp, "--env-file", str(env_file), IMAGE)  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            state = run(podman, "inspect", "--format", "{{.State.Running}}", name).stdout
            assert state.strip() == "true", run(podman, "logs", name).stderr
            assert time.monotonic() < deadline, "the container did not serve"
            time.sleep(0.2)
        assert requests.get(f"{base}/readyz", timeout=5).json()["redis"] == "ok"
        auth = {"Authorization": f"Bearer {KEY_A}"}
        started = requests.post(
            f"{base}/otp/start", json={"phone": PHONE}, headers=auth, timeout=10
        )
        assert started.status_code == 201, started.text
        assert run(podman, "exec", name, "id", "-u").stdout.strip() == "10001"
        pid1 = run(podman, "exec", name, "cat", "/proc/1/cmdline").stdout
        assert "gunicorn" in pid1
        assert run(podman, "healthcheck", "run", name, check=False).returncode == 0
        began = time.monotonic()
        run(podman, "stop", "--time", "20", name)
        stopped_in = time.monotonic() - began
        exit_code = run(podman, "inspect", "--format", "{{.State.ExitCode}}", name).stdout
        assert exit_code.strip() == "0"
        assert stopped_in < 15
        logs = run(podman, "logs", name)
        lines = [json.loads(line) for line in (logs.stdout + logs.stderr).splitlines() if line]
        assert [line for line in lines if line.get("level") == "ERROR"] == []
        pytest.FIGURES["image"] = (  # type: ignore[attr-defined]
            f"read-only root, uid 10001, start 201, SIGTERM to exit 0 in {stopped_in:.1f} s"
        )
    finally:
        run(podman, "rm", "-f", name, check=False)


def test_a_worker_container_of_the_image_is_healthy(
    podman: str, redis_url: str, redis_client: object, termii: FakeTermii, tmp_path
):
    """The same image running ``otpsvc worker --heartbeat /tmp/worker-alive`` (as the worker
    Deployment does) passes the image's HEALTHCHECK: it judged every container by the API's
    /healthz, so a worker container was always unhealthy."""
    env = fake_termii_env(redis_url, termii)
    env_file = tmp_path / "env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    name = f"otpsvc-worker-test-{free_port()}"
    in_container_tmp = "/tmp"  # noqa: S108 - the container's own, an in-memory tmpfs
    heartbeat = "/tmp/worker-alive"  # noqa: S108 - inside the container, as the Deployment has it
    run(podman, "run", "-d", "--name", name, "--network", "host", "--read-only",
        "--tmpfs", in_container_tmp, "--env-file", str(env_file), IMAGE,
        "otpsvc", "worker", "--heartbeat", heartbeat)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while run(podman, "exec", name, "test", "-f", heartbeat, check=False).returncode:
            state = run(podman, "inspect", "--format", "{{.State.Running}}", name).stdout
            assert state.strip() == "true", run(podman, "logs", name).stderr
            assert time.monotonic() < deadline, "the worker never touched its heartbeat"
            time.sleep(0.5)
        assert run(podman, "healthcheck", "run", name, check=False).returncode == 0
    finally:
        run(podman, "rm", "-f", name, check=False)
