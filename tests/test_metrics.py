"""GET /metrics: prometheus-client's text format, the counters an operator needs, bounded labels;
the alert rules under promtool; a real Prometheus scraping a real otpsvc."""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from importlib import metadata
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from otpsvc.dev.redis_server import free_port
from tests.conftest import KEY_A, KEY_B, PHONE, Api, fake_termii_env
from tests.fakes.termii import FakeTermii
from tests.test_cli import wait_until_serving

ALERTS = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"


def scrape(api: Api, **headers: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = api.client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.data
    values = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def value(values: dict, name: str, **labels: str) -> float:
    return values.get((name, tuple(sorted(labels.items()))), 0.0)


def test_a_verification_shows_in_the_metrics(api: Api, termii: FakeTermii):
    before = scrape(api)
    vid = api.start().get_json()["id"]
    api.check(vid, "000000" if termii.last_code() != "000000" else "111111")
    api.check(vid, termii.last_code())
    after = scrape(api)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    a = {"client": "client-a"}
    started = {**a, "provider": "termii", "country": "NG", "mode": "code", "outcome": "created"}
    assert delta("otpsvc_verifications_started_total", **started) == 1
    assert delta("otpsvc_verifications_approved_total", **a, provider="termii", country="NG") == 1
    assert delta("otpsvc_checks_total", **a, result="wrong_code") == 1
    assert delta("otpsvc_checks_total", **a, result="approved") == 1
    assert delta("otpsvc_calls_placed_total", **a, provider="termii", country="NG") == 1
    assert delta("otpsvc_argon2_duration_seconds_count", operation="hash") == 1
    assert delta("otpsvc_argon2_duration_seconds_count", operation="verify") == 2
    # The CPU of those runs, as the bench reads it: one run at the test's parameters is more
    # than 0.1 ms, and its CPU cannot exceed the wall time the histogram saw.
    for operation in ("hash", "verify"):
        cpu = delta("otpsvc_argon2_cpu_seconds_total", operation=operation)
        wall = delta("otpsvc_argon2_duration_seconds_sum", operation=operation)
        assert 0.0001 < cpu <= wall * 1.05 + 0.001
    assert delta("otpsvc_provider_request_duration_seconds_count", provider="termii") == 1
    assert (
        delta("otpsvc_http_request_duration_seconds_count", **a, endpoint="otp.start", code="201")
        == 1
    )
    assert value(after, "otpsvc_call_budget_used_ratio", window="3600") > 0
    assert value(after, "otpsvc_build_info", version=metadata.version("otpsvc"),
                 python=platform.python_version()) == 1  # fmt: skip


def test_starts_over_their_request_limit_count_as_refused(make_app, openapi, termii):
    """A 429 from the request limits is a refused start, with an Idempotency-Key or without."""
    api = Api(make_app(OTPSVC_RATE_LIMIT_START_IP="1 per minute"), KEY_A, openapi)
    assert api.start("+2348031234500").status_code == 201
    before = scrape(api)
    assert api.start("+2348031234501").status_code == 429
    keyed = api.request(
        "POST", "/otp/start", json={"phone": "+2348031234502"}, headers={"Idempotency-Key": "k1"}
    )
    assert keyed.status_code == 429
    refused = {"client": "client-a", "provider": "none", "country": "NG", "mode": "code",
               "outcome": "refused"}  # fmt: skip
    started = value(scrape(api), "otpsvc_verifications_started_total", **refused)
    assert started - value(before, "otpsvc_verifications_started_total", **refused) == 2


def test_refusals_and_provider_errors_are_counted(api: Api, termii: FakeTermii):
    before = scrape(api)
    assert api.start("+254712345678").status_code == 403  # Kenya: outside the allowlist
    termii.mode = "server_error"
    assert api.start("+2348031234500").status_code == 502
    after = scrape(api)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("otpsvc_refusals_total", client="client-a", reason="country") == 1
    assert delta("otpsvc_provider_errors_total", provider="termii", reason="http_5xx") == 1
    refused = {"client": "client-a", "provider": "none", "country": "other", "mode": "code",
               "outcome": "refused"}  # fmt: skip
    assert delta("otpsvc_verifications_started_total", **refused) == 1
    # Labelled with the provider that failed.
    failed = {"client": "client-a", "provider": "termii", "country": "NG", "mode": "code",
              "outcome": "failed"}  # fmt: skip
    assert delta("otpsvc_verifications_started_total", **failed) == 1


def test_labels_hold_no_number_and_no_id(api: Api, termii: FakeTermii):
    vid = api.start().get_json()["id"]
    text = api.client.get("/metrics").get_data(as_text=True)
    assert vid not in text
    assert PHONE.lstrip("+") not in text
    assert termii.last_code() not in text.replace("0.", "")


def test_a_metrics_token_guards_the_endpoint(make_app, openapi):
    api = Api(make_app(OTPSVC_METRICS_TOKEN="scrape-token-0123456789"), None, openapi)
    assert api.client.get("/metrics").status_code == 401
    wrong = api.client.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    scrape(api, Authorization="Bearer scrape-token-0123456789")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("OTPSVC_REQUIRE_PROMETHEUS"):
            pytest.fail(f"{name} is required here (Debian package prometheus)")
        pytest.skip(f"{name} is not installed (Debian package prometheus; .ci/run installs it)")
    return path


def test_the_alert_rules_pass_promtool():
    promtool = _tool("promtool")
    subprocess.run([promtool, "check", "rules", str(ALERTS / "alerts.yml")], check=True)
    subprocess.run([promtool, "test", "rules", "alerts_test.yml"], check=True, cwd=ALERTS)


def test_a_real_prometheus_scrapes_a_real_otpsvc(redis_url, redis_client, termii, tmp_path):
    """otpsvc serve (2 workers, multiprocess metrics) and Prometheus scraping it every second;
    starts made through either worker are summed and read back through Prometheus's API; the
    provider's breaker is seen open, then closed once its cool-off ended (it is read from Redis
    at scrape time, not as one worker last saw it)."""
    prometheus = _tool("prometheus")
    port, prom_port = free_port(), free_port()
    env = {**os.environ, **fake_termii_env(redis_url, termii), "PORT": str(port),
           "HOST": "127.0.0.1", "WEB_CONCURRENCY": "2",
           "OTPSVC_BREAKER_THRESHOLD": "2", "OTPSVC_BREAKER_COOLOFF": "3"}  # fmt: skip
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    service = subprocess.Popen([sys.executable, "-m", "otpsvc", "serve"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [{"job_name": "otpsvc",
                            "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}],
    }))  # fmt: skip
    server = subprocess.Popen(
        [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_serving(base, service)
        auth = {"Authorization": f"Bearer {KEY_A}"}
        for i in range(6):
            phone = f"+23480312345{i:02d}"
            assert requests.post(f"{base}/otp/start", json={"phone": phone}, headers=auth,
                                 timeout=10).status_code == 201  # fmt: skip

        def seen(promql: str, wanted: float) -> float | None:
            """The query's value once it is ``wanted`` (or the last value after 60 s)."""
            query = urllib.parse.quote(promql)
            deadline = time.monotonic() + 60
            value = None
            while time.monotonic() < deadline:
                try:
                    answer = requests.get(
                        f"http://127.0.0.1:{prom_port}/api/v1/query?query={query}", timeout=2
                    ).json()
                    result = answer["data"]["result"]
                    value = float(result[0]["value"][1]) if result else None
                except (requests.ConnectionError, ValueError, KeyError):
                    value = None
                if value == wanted:
                    break
                time.sleep(0.5)
            return value

        assert seen('sum(otpsvc_verifications_started_total{outcome="created"})', 6) == 6
        breaker = 'max(otpsvc_provider_breaker_open{provider="termii"})'
        assert seen(breaker, 0) == 0
        termii.mode = "server_error"
        for i in range(2):
            assert requests.post(f"{base}/otp/start", json={"phone": f"+23480312346{i:02d}"},
                                 headers=auth, timeout=10).status_code == 502  # fmt: skip
        termii.mode = "ok"
        assert seen(breaker, 1) == 1
        assert seen(breaker, 0) == 0
    finally:
        for process in (server, service):
            process.send_signal(signal.SIGTERM)
        for process in (server, service):
            process.wait(30)


def test_refusal_and_provider_error_series_exist_at_zero_from_the_start(
    redis_url, termii: FakeTermii
):
    """In a fresh process, before anything happened, every refusal reason and every provider
    error reason of each configured provider is a series at 0: an alert's increase() over the
    first burst then sees it (a series born at its first increment reads 0 there)."""
    from otpsvc import metrics

    env = {**os.environ, **fake_termii_env(redis_url, termii)}
    script = (
        "from otpsvc import create_app\n"
        "print(create_app().test_client().get('/metrics').get_data(as_text=True))"
    )
    text = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    ).stdout
    for client in ("client-a", "client-b"):
        for reason in metrics.REFUSAL_REASONS:
            line = f'otpsvc_refusals_total{{client="{client}",reason="{reason}"}} 0.0'
            assert line in text, (client, reason)
    assert 'otpsvc_provider_breaker_openings_total{provider="termii"} 0.0' in text
    for reason in metrics.PROVIDER_ERROR_REASONS:
        line = f'otpsvc_provider_errors_total{{provider="termii",reason="{reason}"}} 0.0'
        assert line in text, reason


def test_each_client_is_its_own_series(make_app, openapi, termii: FakeTermii):
    """One tenant's traffic and refusals are counted under its name only; a failed
    authentication counts under client none."""
    app = make_app()
    a, b = Api(app, KEY_A, openapi), Api(app, KEY_B, openapi)
    before = scrape(a)
    assert a.start().status_code == 201
    assert b.start("+254712345678").status_code == 403  # outside the allowlist
    unknown = a.client.post("/otp/start", json={"phone": PHONE},
                            headers={"Authorization": "Bearer nope"})  # fmt: skip
    assert unknown.status_code == 401
    after = scrape(a)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    created = {"provider": "termii", "country": "NG", "mode": "code", "outcome": "created"}
    assert delta("otpsvc_verifications_started_total", client="client-a", **created) == 1
    assert delta("otpsvc_verifications_started_total", client="client-b", **created) == 0
    assert delta("otpsvc_refusals_total", client="client-b", reason="country") == 1
    assert delta("otpsvc_refusals_total", client="client-a", reason="country") == 0
    assert delta("otpsvc_calls_placed_total", client="client-a", provider="termii",
                 country="NG") == 1  # fmt: skip
    code = {"endpoint": "otp.start", "code": "401"}
    assert delta("otpsvc_http_request_duration_seconds_count", client="none", **code) == 1
    assert value(after, "otpsvc_store_up") == 1


def test_a_client_budget_is_a_gauge_and_redis_down_is_store_up_0(
    make_app, openapi, termii: FakeTermii, tmp_path
):
    clients = tmp_path / "clients.toml"
    clients.write_text('[clients.client-a]\ncall_budget = "4 per hour"\n')
    api = Api(make_app(OTPSVC_CLIENTS_FILE=str(clients)), KEY_A, openapi)
    assert api.start().status_code == 201
    values = scrape(api)
    ratio = "otpsvc_client_call_budget_used_ratio"
    assert value(values, ratio, client="client-a", window="3600") == 0.25
    assert (ratio, (("client", "client-b"), ("window", "3600"))) not in values
    dead = Api(make_app(OTPSVC_REDIS_URL="redis://127.0.0.1:1/0"), KEY_A, openapi)
    values = scrape(dead)
    assert value(values, "otpsvc_store_up") == 0
    assert not any(name == ratio for name, _ in values)
