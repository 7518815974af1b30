"""The operator's ``otpsvc`` command, against the real Redis and the environment it is given."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
import requests
from click.testing import CliRunner

from otpsvc.cli import main
from otpsvc.dev.redis_server import free_port
from tests.conftest import KEY_A, PHONE, SECRET, TERMII_KEY, Api, base_env, wrong_code
from tests.fakes.termii import FakeTermii

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def env(redis_url: str, redis_client: object, termii: FakeTermii) -> dict[str, str]:
    """The service's environment, on a flushed Redis."""
    return {
        **base_env(redis_url),
        "OTPSVC_PROVIDERS": "termii",
        "OTPSVC_TERMII_BASE_URL": termii.url,
        "OTPSVC_TERMII_API_KEY": TERMII_KEY,
    }


def run(env: dict[str, str], *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.output


def test_version():
    code, out = run({}, "--version")
    assert code == 0
    assert out.startswith("otpsvc, version ")


def test_check_config_prints_the_effective_settings_with_every_secret_masked(env):
    env = {**env, "OTPSVC_REDIS_URL": env["OTPSVC_REDIS_URL"].replace("//", "//:hunter22@")}
    code, out = run(env, "check-config", "--no-redis")
    assert code == 0, out
    assert "redis: not reached (--no-redis)" in out
    assert "OTPSVC_CODE_TTL = 300" in out
    assert "OTPSVC_API_KEYS = client-a (1 key(s)), client-b (1 key(s))" in out
    for secret in (SECRET, KEY_A, TERMII_KEY, "hunter22"):
        assert secret not in out


def test_check_config_says_why_redis_cannot_be_reached(env):
    """check-config exits 1 naming the cause redis-py gives (here a refused connection), and
    never the URL's password (what the OtpsvcRedisDown runbook has the operator run first)."""
    from otpsvc.dev.redis_server import free_port

    env = {**env, "OTPSVC_REDIS_URL": f"redis://:hunter22@127.0.0.1:{free_port()}/0"}
    result = CliRunner().invoke(main, ["check-config"], env=env)
    assert result.exit_code == 1
    assert "ConnectionError" in result.stderr
    assert "refused" in result.stderr.lower()
    assert "hunter22" not in result.stderr + result.stdout


def test_check_config_reaches_redis_and_warns_without_persistence(env):
    """check-config reaches Redis and says how it keeps its data: the test server keeps none,
    which is warned about (the kill switch and the limits would not survive a restart)."""
    code, out = run(env, "check-config")
    assert code == 0, out
    assert "redis: reachable, persistence none" in out
    assert "warning: redis has no persistence" in out


def test_check_config_exits_1_when_redis_cannot_be_reached(env):
    """A Redis that does not answer is an error of check-config, not a silent pass."""
    closed = f"redis://127.0.0.1:{free_port()}/0"
    code, out = run({**env, "OTPSVC_REDIS_URL": closed}, "check-config")
    assert code == 1
    assert "OTPSVC_REDIS_URL" in out


def test_check_config_lists_every_problem_and_exits_2(env):
    code, out = run({**env, "OTPSVC_CODE_TTL": "5", "OTPSVC_SECRET_KEY": "short"}, "check-config")
    assert code == 2
    assert "OTPSVC_CODE_TTL" in out
    assert "OTPSVC_SECRET_KEY" in out


def test_one_clients_calls_are_suspended_and_resumed_alone(
    env, make_app, openapi, termii: FakeTermii
):
    """``calls suspend --client`` stops one tenant's calls (503 calls_suspended, scope client)
    while another tenant's go on; status names it; ``resume --client`` lifts it; an unknown
    client is refused by name."""
    from tests.conftest import KEY_B

    app = make_app()
    tenant, other = Api(app, KEY_A, openapi), Api(app, KEY_B, openapi)
    code, out = run(env, "calls", "suspend", "--client", "client-a", "--reason", "pumping")
    assert code == 0, out
    assert "calls of client-a suspended" in out
    refused = tenant.start()
    assert refused.status_code == 503
    body = refused.get_json()
    assert body["code"] == "calls_suspended"
    assert (body["limit"], body["scope"]) == ("kill_switch", "client")
    assert other.start("+2348031234599").status_code == 201
    code, out = run(env, "calls", "status")
    assert "calls: enabled" in out
    assert "calls of client-a: suspended since" in out
    assert "pumping" in out
    assert run(env, "calls", "resume", "--client", "client-a")[0] == 0
    assert tenant.start().status_code == 201
    result = CliRunner().invoke(main, ["calls", "suspend", "--client", "nobody"], env=env)
    assert result.exit_code == 2
    assert "'nobody' is not a client" in result.output


def test_calls_suspend_resume_and_status(env, make_app, openapi, termii: FakeTermii):
    """The kill switch from the command line stops and restarts calls in a running service.
    The refusal says it is the kill switch (not the budget); who suspended, when and why show
    in `calls status`, the audit line, /readyz and the otpsvc_calls_suspended gauge."""
    app = make_app()
    api, probe = Api(app, KEY_A, openapi), Api(app, None, openapi)
    code, out = run(env, "calls", "suspend", "--reason", "toll fraud wave to +881")
    assert code == 0
    audit_line = json.loads(next(line for line in out.splitlines() if "kill_switch" in line))
    assert audit_line["action"] == "suspend"
    assert audit_line["reason"] == "toll fraud wave to +881"
    assert audit_line["by"]
    code, out = run(env, "calls", "status")
    assert code == 0
    assert "suspended by the kill switch" in out
    assert f"by {audit_line['by']}: toll fraud wave to +881" in out
    refused = api.start()
    assert refused.status_code == 503
    body = refused.get_json()
    assert body["code"] == "calls_suspended"
    assert "by an operator" in body["detail"]
    assert "budget" not in body["detail"]
    assert (body["limit"], body["scope"]) == ("kill_switch", "global")
    assert probe.request("GET", "/readyz").get_json()["calls"] == "suspended"
    assert "otpsvc_calls_suspended 1.0" in probe.request("GET", "/metrics").get_data(as_text=True)
    assert run(env, "calls", "resume")[0] == 0
    assert probe.request("GET", "/readyz").get_json()["calls"] == "enabled"
    assert "otpsvc_calls_suspended 0.0" in probe.request("GET", "/metrics").get_data(as_text=True)
    assert api.start().status_code == 201
    code, out = run(env, "calls", "status")
    assert "calls: enabled" in out
    assert "call budget: 1 of 2000 per 3600 s used" in out
    assert not termii.calls[1:]


def test_unblock_lifts_the_failure_cap_with_an_audit_line(
    env, make_app, openapi, termii: FakeTermii, clock
):
    env = {**env, "OTPSVC_MAX_FAILED_CHECKS_PER_NUMBER": "1"}
    api = Api(make_app(OTPSVC_MAX_FAILED_CHECKS_PER_NUMBER="1"), KEY_A, openapi)
    vid = api.start().get_json()["id"]
    api.check(vid, wrong_code(termii.last_code()))
    api.cancel(vid)
    assert api.start().get_json()["code"] == "too_many_failed_checks"
    code, out = run(env, "unblock", PHONE)
    assert code == 0
    assert "+234*******567: unblocked" in out
    assert PHONE not in out
    clock.advance(31)  # the canceled verification's resend cooldown still holds
    assert api.start().status_code == 201


def test_unblock_refuses_a_bad_number(env):
    code, out = run(env, "unblock", "12")
    assert code == 2
    assert "PHONE" in out


def test_commands_say_when_redis_is_away(env):
    code, out = run(
        {**env, "OTPSVC_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}, "calls", "status"
    )
    assert code == 1
    assert "OTPSVC_REDIS_URL" in out


def wait_until_serving(base: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Until ``GET /healthz`` answers 200; fails at once if the server process exits."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        assert process.poll() is None, "the server exited"
        assert time.monotonic() < deadline, "the server did not come up"
        time.sleep(0.1)


def test_serve_runs_gunicorn_on_port_with_the_given_workers(env, termii: FakeTermii, tmp_path):
    """``otpsvc serve`` honours PORT, WEB_CONCURRENCY and GUNICORN_CMD_ARGS and serves the API;
    an access log, when turned on, holds no callback token."""
    port = free_port()
    access_log = tmp_path / "access.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "otpsvc", "serve"],
        env={
            **os.environ,
            **env,
            "PORT": str(port),
            "WEB_CONCURRENCY": "2",
            "HOST": "127.0.0.1",
            "GUNICORN_CMD_ARGS": f"--access-logfile {access_log}",
            # A home nothing can be written to, as under the image's read-only root.
            "HOME": "/proc",
            "XDG_RUNTIME_DIR": "",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(base, process)
        response = requests.post(
            f"{base}/otp/start",
            json={"phone": PHONE},
            headers={"Authorization": f"Bearer {KEY_A}"},
            timeout=10,
        )
        assert response.status_code == 201, response.text
        assert len(termii.calls) == 1
        # gunicorn spawns its workers one after another: the first may serve before the second
        # exists, so the count is awaited (bounded), not read once.
        deadline = time.monotonic() + 20
        while True:
            workers = subprocess.run(
                ["pgrep", "-P", str(process.pid)], capture_output=True, text=True, check=False
            ).stdout.split()
            if len(workers) >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert len(workers) == 2
        callback = requests.get(f"{base}/webhooks/cequens/tok3n-SEEN-1n-a-log/status", timeout=5)
        assert callback.status_code == 401
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0].decode()
    assert SECRET not in output
    assert process.returncode == 0, output
    # gunicorn's own lines are JSON like the service's: one stream an operator can parse.
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]
    assert any("Booting worker" in line["message"] for line in lines)
    assert [line for line in lines if line["level"] == "ERROR"] == []
    logged = access_log.read_text()
    entries = [json.loads(line) for line in logged.splitlines()]
    started = next(e for e in entries if e["path"] == "/otp/start")
    assert (started["method"], started["status"]) == ("POST", 201)
    assert started["request_id"]
    assert started["duration_ms"] > 0
    assert any(e["path"] == "/webhooks/cequens/[token]/status" for e in entries)
    assert "tok3n-SEEN-1n-a-log" not in logged


def test_serve_stops_on_a_bad_setting_with_status_2(env):
    result = subprocess.run(
        [sys.executable, "-m", "otpsvc", "serve"],
        env={**os.environ, **env, "OTPSVC_CODE_TTL": "5"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "OTPSVC_CODE_TTL" in result.stderr


def test_every_command_says_what_it_does_and_where_the_docs_tell_more():
    """The top level lists every command; each one's help names a page of the docs site."""
    import yaml

    from otpsvc.cli import main as command

    nav = json.dumps(yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"])
    runner = CliRunner()
    listed = runner.invoke(command, ["--help"]).output
    for name, sub in command.commands.items():
        assert name in listed
        names = [[name]]
        if isinstance(sub, click.Group):
            names += [[name, inner] for inner in sub.commands]
        for words in names:
            text = " ".join(runner.invoke(command, [*words, "--help"]).output.split())
            found = re.search(r"More: the docs' \"([^\"]+)\"", text)
            assert found, f"otpsvc {' '.join(words)} --help names no docs page"
            assert f'"{found.group(1)}"' in nav, found.group(1)


def test_the_cli_starts_without_the_web_app():
    """`otpsvc --version` and an operator's command load neither Flask nor the app (the CLI
    took over a second to start while every command imported them)."""
    script = (
        "import sys\n"
        "from otpsvc.cli import main\n"
        "try:\n"
        "    main(['--version'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in ('flask', 'otpsvc.app', 'otpsvc.api') if m in sys.modules))\n"
    )
    answer = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True)  # fmt: skip
    assert answer.stdout.strip().endswith("[]"), answer.stdout
