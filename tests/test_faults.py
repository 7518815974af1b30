"""Redis gone: checks are 503 (never valid), starts place no call, readiness fails, and recovery."""

from __future__ import annotations

import time

import pytest

from otpsvc import create_app
from otpsvc.dev.redis_server import RedisServer
from tests.conftest import KEY_A, Api, fake_termii_env
from tests.fakes.termii import FakeTermii


@pytest.fixture
def own_redis():
    """A redis-server of this test's own, which the test may stop and start again."""
    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture
def fault_api(own_redis, termii: FakeTermii, openapi, clock):
    env = fake_termii_env(
        own_redis.url, termii, OTPSVC_REDIS_TIMEOUT="0.5", OTPSVC_REDIS_CONNECT_TIMEOUT="0.5"
    )
    app = create_app(env, clock=clock)
    yield Api(app, KEY_A, openapi)
    app.extensions["otpsvc"].redis.close()


def test_redis_down_check_is_503_never_valid(fault_api: Api, own_redis, termii: FakeTermii):
    """With Redis stopped, the right code gets 503 store_unavailable."""
    vid = fault_api.start().get_json()["id"]
    code = termii.last_code()
    own_redis.stop()
    started = time.monotonic()
    response = fault_api.check(vid, code)
    elapsed = time.monotonic() - started
    pytest.FIGURES["redis stopped: check"] = f"503 store_unavailable in {elapsed * 1000:.0f} ms"  # type: ignore[attr-defined]
    assert response.status_code == 503
    assert response.get_json()["code"] == "store_unavailable"
    assert "valid" not in response.get_json()


def test_redis_down_start_places_no_call(fault_api: Api, own_redis, termii: FakeTermii):
    """With Redis stopped, a start is 503 and Termii is never asked to call."""
    own_redis.stop()
    started = time.monotonic()
    response = fault_api.start()
    elapsed = time.monotonic() - started
    pytest.FIGURES["redis stopped: start"] = (  # type: ignore[attr-defined]
        f"503 store_unavailable in {elapsed * 1000:.0f} ms, no call placed"
    )
    assert response.status_code == 503
    assert termii.calls == []


def test_redis_down_reads_are_503_and_readiness_reports_it(fault_api: Api, own_redis):
    """While Redis is down a read answers 503; /readyz stays 200 and reports Redis unavailable
    (every pod shares Redis: failing readiness would empty the Service, and callers would get
    connection errors instead of fast 503s); /readyz?deep=1 is 503; /healthz stays 200."""
    own_redis.stop()
    assert fault_api.get("0" * 36).status_code == 503
    ready = fault_api.request("GET", "/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["redis"] == "unavailable"
    assert fault_api.request("GET", "/readyz?deep=1").status_code == 503
    assert fault_api.request("GET", "/healthz").status_code == 200


def test_service_recovers_when_redis_returns(fault_api: Api, own_redis, termii: FakeTermii):
    """After Redis restarts on its port, the same app starts and checks again without a restart."""
    own_redis.stop()
    assert fault_api.start().status_code == 503
    own_redis.start()
    response = fault_api.start()
    pytest.FIGURES["redis back on its port"] = "next start 201, no restart"  # type: ignore[attr-defined]
    assert response.status_code == 201
    assert fault_api.check(response.get_json()["id"], termii.last_code()).get_json()["valid"]


def test_readiness_warns_when_redis_may_evict(fault_api: Api, own_redis):
    """A maxmemory-policy other than noeviction is reported as a readiness warning."""
    import redis

    redis.Redis.from_url(own_redis.url).config_set("maxmemory-policy", "allkeys-lru")
    body = fault_api.request("GET", "/readyz").get_json()
    assert any("noeviction" in w for w in body["warnings"])
