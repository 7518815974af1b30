"""Log lines an operator can work with: failures as fields, and lines a stranger can cause
sampled, never with key material, a number or a code."""

from __future__ import annotations

import json
import logging

from otpsvc.logs import JsonFormatter
from tests.conftest import KEY_A, PHONE, Api
from tests.fakes.termii import FakeTermii


def lines(caplog) -> list[dict]:  # type: ignore[no-untyped-def]
    return [json.loads(JsonFormatter().format(r)) for r in caplog.records]


def test_a_failed_call_says_why_in_fields(api: Api, termii: FakeTermii, caplog):
    """Each provider failure is a line with the verification, the provider, its HTTP status,
    the reason and what it did to the breaker; delivery_failed lists each provider's reason."""
    caplog.set_level(logging.INFO)
    termii.mode = "server_error"
    vid = api.start().get_json()["verification_id"]
    logged = lines(caplog)
    failure = next(line for line in logged if line.get("event") == "provider_failed")
    assert failure["id"] == vid
    assert (failure["provider"], failure["http_status"]) == ("termii", 500)
    assert failure["reason"] == "http_5xx"
    assert failure["breaker"] == "unchanged"
    summary = next(line for line in logged if line.get("event") == "delivery_failed")
    assert summary["reasons"]["termii"]
    assert PHONE not in json.dumps(logged)


def test_an_accepted_call_logs_the_providers_message_id(api: Api, termii: FakeTermii, caplog):
    """The provider's message id, which its support asks for, is on the start's audit line."""
    caplog.set_level(logging.INFO)
    data = api.start().get_json()
    start = next(line for line in lines(caplog) if line.get("event") == "start")
    assert start["provider_message_id"] == data["delivery"]["provider_message_id"]


def test_unknown_ids_and_bad_keys_leave_sampled_lines(app, openapi, caplog):
    """A check of an unknown id and a wrong key each leave an audit line (no key material),
    sampled: 50 of each leave a handful, not 50."""
    caplog.set_level(logging.INFO)
    api = Api(app, KEY_A, openapi)
    for _ in range(50):
        api.check("a" * 36, "123456")
    wrong = "Wrong-key-0123456789abcdefXYZ"
    for _ in range(8):
        Api(app, wrong, openapi).request("GET", "/otp/" + "0" * 36)
    logged = lines(caplog)
    unknown = [line for line in logged if line.get("result") == "not_found"]
    failed_auth = [line for line in logged if line.get("event") == "auth_failed"]
    assert 1 <= len(unknown) <= 10
    assert 1 <= len(failed_auth) <= 8
    assert failed_auth[0]["path"] == "/otp/" + "0" * 36
    assert wrong not in json.dumps(logged)


def test_dev_mode_lines_keep_the_audit_fields():
    """``otpsvc dev`` prints readable lines, with the audit fields the JSON lines carry."""
    from otpsvc.logs import ReadableFormatter

    record = logging.LogRecord("otpsvc.audit", logging.INFO, "x", 1, "check", None, None)
    record.audit = {"event": "check", "id": "abc", "client": "web", "result": "approved"}
    line = ReadableFormatter().format(record)
    assert line.endswith("otpsvc.audit check id=abc client=web result=approved")


def test_access_lines_survive_a_stderr_that_is_a_regular_file(
    redis_url, redis_client, termii, tmp_path
):
    """``otpsvc serve`` with stderr redirected to a file (not opened to append, as a plain
    ``2> file`` does): every request's access line is there, whole, beside gunicorn's and the
    service's own lines (a second descriptor on /dev/stderr used to overwrite them)."""
    import json
    import subprocess
    import sys

    import requests

    from otpsvc.dev.redis_server import free_port
    from tests.test_cli import wait_until_serving
    from tests.test_serving import serve_env

    port = free_port()
    log = tmp_path / "server.log"
    env = serve_env(redis_url, termii, port, OTPSVC_LOG_LEVEL="INFO", WEB_CONCURRENCY="2")
    with log.open("w") as sink:  # O_TRUNC, not O_APPEND
        server = subprocess.Popen(
            [sys.executable, "-m", "otpsvc", "serve"], env=env, stdout=sink, stderr=sink
        )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_serving(base, server)
        for i in range(30):
            requests.get(f"{base}/healthz", headers={"X-Request-Id": f"probe-{i}"}, timeout=10)
    finally:
        server.terminate()
        server.wait(30)
    lines = log.read_text().splitlines()
    parsed = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(parsed) == len([line for line in lines if line.strip()]), lines
    seen = {p.get("request_id") for p in parsed if p.get("event") == "access"}
    assert {f"probe-{i}" for i in range(30)} <= seen
