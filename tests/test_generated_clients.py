"""Clients generated from openapi.yaml by standard generators, proven by a sign-in against
``otpsvc dev``: examples/python (openapi-python-client) and examples/typescript
(openapi-typescript and openapi-fetch, compiled with ``tsc --strict``). Each starts a
verification, replays it with its Idempotency-Key, reads the code from the dev inbox, checks a
wrong code and the right one, honours a 429's Retry-After, and receives the approval event on a
webhook that verifies it with the official ``standardwebhooks`` library."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from otpsvc.dev.redis_server import free_port
from tests.test_dev_mode import start_dev

ROOT = Path(__file__).resolve().parent.parent
KEY = "shop-" + "Vn4kP8rT1xM6qW3zL9cH2jF7dB5sG0aY"
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
def dev_with_webhook(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """``otpsvc dev`` whose client ``shop`` has a webhook on a free port: (URL, that port)."""
    port = free_port()
    out = (tmp_path / "dev.txt").open("w")
    process, base = start_dev(
        out,
        env={
            "OTPSVC_API_KEYS": f"shop:{KEY}",
            "OTPSVC_EVENT_WEBHOOKS": f"shop=http://127.0.0.1:{port}/hooks",
            "OTPSVC_EVENT_WEBHOOK_SECRETS": f"shop={SECRET}",
            "OTPSVC_RESEND_COOLDOWN": "2",
        },
    )
    try:
        yield base, port
    finally:
        process.terminate()
        process.wait(20)


@pytest.mark.timeout(300)
def test_the_generated_python_client_signs_in(dev_with_webhook, tmp_path: Path):
    base, port = dev_with_webhook
    bin_dir = Path(sys.executable).parent
    generated = subprocess.run(
        [str(bin_dir / "openapi-python-client"), "generate", "--path",
         str(ROOT / "openapi.yaml"), "--output-path", str(tmp_path / "client")],
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert generated.returncode == 0, generated.stdout + generated.stderr
    ran = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "python" / "login.py"), base, KEY, SECRET,
         str(port)],
        env={**os.environ, "PYTHONPATH": str(tmp_path / "client")},
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "replayed, no second call" in ran.stdout
    assert re.search(r"429 resend_too_soon, Retry-After \d+ s", ran.stdout)
    assert "event verification.approved" in ran.stdout


def _npm() -> str | None:
    found = shutil.which("npm")
    if found is None and os.environ.get("OTPSVC_REQUIRE_CLIENTS"):
        pytest.fail("npm is required (OTPSVC_REQUIRE_CLIENTS): .ci/run installs Debian's npm")
    return found


@pytest.mark.timeout(400)
def test_the_generated_typescript_client_compiles_strict_and_signs_in(
    dev_with_webhook, tmp_path: Path
):
    npm = _npm()
    if npm is None:
        pytest.skip("npm is not installed (.ci/run installs it)")
    base, port = dev_with_webhook
    work = tmp_path / "examples" / "typescript"
    shutil.copytree(ROOT / "examples" / "typescript", work, ignore=shutil.ignore_patterns(
        "node_modules", "dist", "schema.d.ts"))  # fmt: skip
    # The example reads the contract from the repository's root, two levels up.
    (tmp_path / "openapi.yaml").write_text((ROOT / "openapi.yaml").read_text())
    work_env = {**os.environ, "npm_config_update_notifier": "false"}
    for step in (["ci", "--no-audit", "--no-fund"], ["run", "generate"], ["run", "build"]):
        done = subprocess.run([npm, *step], cwd=work, env=work_env, capture_output=True,
                              text=True, check=False, timeout=300)  # fmt: skip
        assert done.returncode == 0, f"npm {' '.join(step)}: {done.stdout}{done.stderr}"
    ran = subprocess.run(
        ["node", "dist/login.js", base, KEY, SECRET, str(port)],
        cwd=work, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "replayed, no second call" in ran.stdout
    assert re.search(r"429 resend_too_soon, Retry-After \d+ s", ran.stdout)
    assert "event verification.approved" in ran.stdout
