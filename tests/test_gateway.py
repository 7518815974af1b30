"""A client that is an API gateway (``caller = "gateway"``): the end user whose request it passes
through cannot choose who they are. Their address is the forwarded one, their id the header the
gateway sets (only from a trusted proxy), an ``end_user`` in the body is refused, and their
Idempotency-Keys are their own. A backend client behaves as before. The real nginx and HAProxy
in front of ``otpsvc serve`` are in tests/test_gateway_recipes.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask
from openapi_core import OpenAPI

from otpsvc.config import load_settings
from otpsvc.errors import ConfigError
from tests.conftest import KEY_A, KEY_B, Api, termii_env

GATEWAY = "10.9.0.2"
OUTSIDE = "198.51.100.9"
GATEWAY_ENV = {
    "OTPSVC_TRUSTED_PROXIES": "1",
    "OTPSVC_TRUSTED_PROXY_NETWORKS": "10.9.0.0/24",
    # The per-person limits as shipped: what the gateway's end users must each get.
    "OTPSVC_RATE_LIMIT_START_IP": "10 per minute;60 per hour",
    "OTPSVC_VELOCITY_IP": "10 per hour;30 per day",
}


def client_file(tmp_path: Path, text: str = '[clients.client-a]\ncaller = "gateway"\n') -> str:
    path = tmp_path / "clients.toml"
    path.write_text(text)
    return str(path)


@pytest.fixture
def gateway_app(make_app: Callable[..., Flask], tmp_path: Path) -> Flask:
    """client-a is a gateway, client-b a backend, behind one trusted proxy network."""
    return make_app(**GATEWAY_ENV, OTPSVC_CLIENTS_FILE=client_file(tmp_path))


def phone(i: int) -> str:
    return f"+2348031{i:06d}"


def through_gateway(
    api: Api,
    path: str,
    body: object,
    person: str,
    *,
    user: str | None = None,
    peer: str = GATEWAY,
    headers: dict[str, str] | None = None,
):
    """A request as the gateway forwards it: from its address, with the person's address in
    X-Forwarded-For and, when the gateway authenticated them, their id in X-End-User-Id."""
    sent = {"X-Forwarded-For": person, **(headers or {})}
    if user is not None:
        sent["X-End-User-Id"] = user
    return api.request(
        "POST",
        path,
        data=body if isinstance(body, str) else json.dumps(body),
        content_type="application/json",
        headers=sent,
        environ_base={"REMOTE_ADDR": peer},
    )


def test_a_gateway_client_refuses_end_user_in_the_body(gateway_app, openapi: OpenAPI):
    """end_user from a gateway client is a 422 naming the field, however it is spelled in JSON."""
    api = Api(gateway_app, KEY_A, openapi)
    for body in (
        {"phone": phone(1), "end_user": {"ip": "192.0.2.1"}},
        '{"phone": "' + phone(2) + '", "end\\u005fuser": {"user_id": "victim"}}',
    ):
        refused = through_gateway(api, "/otp/start", body, "203.0.113.5")
        assert refused.status_code == 422
        problem = refused.get_json()
        assert list(problem["errors"]) == ["end_user"]
        assert "gateway" in problem["errors"]["end_user"][0]
    refused = through_gateway(
        api, "/otp/check", {"id": "0" * 36, "code": "123456", "end_user": {}}, "203.0.113.5"
    )
    assert refused.status_code == 422
    assert list(refused.get_json()["errors"]) == ["end_user"]


def test_one_forwarded_address_gets_its_limit_whatever_the_body_says(gateway_app, openapi: OpenAPI):
    """16 starts from one person: 10 accepted (the per-address limit), the rest refused, while
    another person behind the same gateway is not held back by them."""
    api = Api(gateway_app, KEY_A, openapi)
    statuses = [
        through_gateway(api, "/otp/start", {"phone": phone(100 + i)}, "203.0.113.7").status_code
        for i in range(16)
    ]
    assert statuses.count(201) == 10
    assert set(statuses[10:]) == {429}
    other = through_gateway(api, "/otp/start", {"phone": phone(200)}, "203.0.113.8")
    assert other.status_code == 201


def test_the_end_user_id_comes_from_the_gateway_header(gateway_app, openapi: OpenAPI):
    """The per-account limit counts the id the trusted gateway sets: the sixth call for one
    account in an hour is refused, another account goes on."""
    api = Api(gateway_app, KEY_A, openapi)
    for i in range(5):
        started = through_gateway(
            api, "/otp/start", {"phone": phone(300 + i)}, f"203.0.113.{20 + i}", user="alice"
        )
        assert started.status_code == 201
    refused = through_gateway(
        api, "/otp/start", {"phone": phone(310)}, "203.0.113.30", user="alice"
    )
    assert refused.status_code == 429
    assert refused.get_json()["limit"] == "velocity_user"
    bob = through_gateway(api, "/otp/start", {"phone": phone(311)}, "203.0.113.31", user="bob")
    assert bob.status_code == 201


def test_an_end_user_id_header_from_outside_the_proxies_is_ignored(gateway_app, openapi: OpenAPI):
    """Someone reaching the port directly cannot name an account: their X-End-User-Id is ignored
    (six calls naming "alice" from outside are not counted against alice)."""
    api = Api(gateway_app, KEY_A, openapi)
    for i in range(6):
        started = through_gateway(
            api, "/otp/start", {"phone": phone(400 + i)}, "", user="alice", peer=f"198.51.100.{i}"
        )
        assert started.status_code == 201
    alice = through_gateway(api, "/otp/start", {"phone": phone(410)}, "203.0.113.40", user="alice")
    assert alice.status_code == 201


def test_a_malformed_end_user_id_header_is_a_422_naming_it(gateway_app, openapi: OpenAPI):
    """An end-user id the gateway set that is not printable ASCII is refused by name."""
    api = Api(gateway_app, KEY_A, openapi)
    refused = through_gateway(
        api, "/otp/start", {"phone": phone(500)}, "203.0.113.50", user="x" * 129
    )
    assert refused.status_code == 422
    assert list(refused.get_json()["errors"]) == ["X-End-User-Id"]


def test_two_people_with_the_same_idempotency_key_get_two_verifications(
    gateway_app, openapi: OpenAPI
):
    """Behind a gateway an Idempotency-Key is the person's: the same person gets a replay, while
    two people (by id, or by address) sending the same key never get each other's answer."""
    api = Api(gateway_app, KEY_A, openapi)
    key = {"Idempotency-Key": "login-1"}
    body = {"phone": phone(600)}
    first = through_gateway(api, "/otp/start", body, "203.0.113.60", user="alice", headers=key)
    again = through_gateway(api, "/otp/start", body, "203.0.113.60", user="alice", headers=key)
    assert first.status_code == 201
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.get_json()["id"] == first.get_json()["id"]
    # Someone else with the same key and body is not handed alice's verification.
    other = through_gateway(api, "/otp/start", body, "203.0.113.62", user="mallory", headers=key)
    assert other.status_code == 201
    assert "Idempotent-Replayed" not in other.headers
    assert first.get_json()["id"] not in other.get_data(as_text=True)
    by_id = [
        through_gateway(
            api, "/otp/start", {"phone": phone(601 + i)}, "203.0.113.61", user=user, headers=key
        )
        for i, user in enumerate(("carol", "dave"))
    ]
    by_address = [
        through_gateway(
            api, "/otp/start", {"phone": phone(603 + i)}, f"203.0.113.{70 + i}", headers=key
        )
        for i in range(2)
    ]
    for pair in (by_id, by_address):
        assert [r.status_code for r in pair] == [201, 201]
        assert "Idempotent-Replayed" not in pair[1].headers
        assert pair[0].get_json()["id"] != pair[1].get_json()["id"]


def test_a_persons_start_resends_only_their_own_verification(gateway_app, openapi: OpenAPI, clock):
    """Behind a gateway the open verification for a number is the person's: their second start
    resends it, while another person's start for the same number opens one of their own and
    never learns the first one's id (a backend's second start resends the client's one)."""
    api = Api(gateway_app, KEY_A, openapi)
    body = {"phone": phone(650)}
    alice = through_gateway(api, "/otp/start", body, "203.0.113.65", user="alice").get_json()
    too_soon = through_gateway(api, "/otp/start", body, "203.0.113.66", user="mallory")
    assert too_soon.status_code == 201
    assert alice["id"] not in too_soon.get_data(as_text=True)
    clock.advance(31)
    resent = through_gateway(api, "/otp/start", body, "203.0.113.65", user="alice")
    assert resent.status_code == 200
    assert resent.get_json()["id"] == alice["id"]
    assert resent.get_json()["sends"] == 2


def test_a_ladder_behind_a_gateway_takes_its_steps(make_app, tmp_path, openapi, clock, termii):
    """The ladder's next call finds the person's own verification (it is not ended by the
    person-scoped index)."""
    from otpsvc.core.ladder import LadderRunner

    app = make_app(
        **GATEWAY_ENV,
        OTPSVC_CLIENTS_FILE=client_file(tmp_path),
        OTPSVC_LADDER="voice:termii/30,voice:termii",
    )
    api = Api(app, KEY_A, openapi)
    started = through_gateway(api, "/otp/start", {"phone": phone(660)}, "203.0.113.67", user="al")
    assert started.status_code == 201
    clock.advance(31)
    ladder = LadderRunner(app.extensions["otpsvc"].service)
    assert ladder.run_due() == 1
    ladder.drain()
    assert len(termii.calls) == 2
    view = api.get(started.get_json()["id"]).get_json()
    assert view["sends"] == 2


def test_a_backend_client_beside_it_behaves_as_before(gateway_app, openapi: OpenAPI):
    """client-b (a backend) still names its end user in the body and owns its keys."""
    api = Api(gateway_app, KEY_B, openapi)
    body = {"phone": phone(700), "end_user": {"ip": "192.0.2.70", "user_id": "u-70"}}
    first = api.request(
        "POST",
        "/otp/start",
        json=body,
        headers={"Idempotency-Key": "k"},
        environ_base={"REMOTE_ADDR": OUTSIDE},
    )
    again = api.request(
        "POST",
        "/otp/start",
        json=body,
        headers={"Idempotency-Key": "k"},
        environ_base={"REMOTE_ADDR": "198.51.100.10"},
    )
    assert first.status_code == 201
    assert again.headers.get("Idempotent-Replayed") == "true"


@pytest.mark.parametrize(("proxies", "networks"), [("0", ""), ("0", "10.9.0.0/24")])
def test_a_gateway_client_without_trusted_proxies_is_refused(
    redis_url, tmp_path, proxies, networks
):
    """A gateway client with no trusted proxy (each person would count as the gateway) is a
    configuration error naming the client's key and both proxy settings."""
    env = termii_env(
        redis_url,
        OTPSVC_CLIENTS_FILE=client_file(tmp_path),
        OTPSVC_TRUSTED_PROXIES=proxies,
        OTPSVC_TRUSTED_PROXY_NETWORKS=networks,
    )
    with pytest.raises(ConfigError) as raised:
        load_settings(env)
    assert len(raised.value.problems) == 1, raised.value.problems
    problem = raised.value.problems[0]
    assert problem.startswith("clients.client-a.caller: 'gateway' needs")
    assert "OTPSVC_TRUSTED_PROXIES" in problem
    assert "OTPSVC_TRUSTED_PROXY_NETWORKS" in problem


@pytest.mark.parametrize(("proxies", "networks"), [("0", ""), ("1", ""), ("0", "10.9.0.0/24")])
def test_a_gateway_default_without_trusted_proxies_is_refused(redis_url, proxies, networks):
    """OTPSVC_CALLER=gateway for every client needs the trusted proxies too."""
    env = termii_env(
        redis_url,
        OTPSVC_CALLER="gateway",
        OTPSVC_TRUSTED_PROXIES=proxies,
        OTPSVC_TRUSTED_PROXY_NETWORKS=networks,
    )
    with pytest.raises(ConfigError) as raised:
        load_settings(env)
    assert any(p.startswith("OTPSVC_CALLER: 'gateway' needs") for p in raised.value.problems)


def test_a_gateway_client_with_its_proxies_loads(redis_url, tmp_path):
    """With the proxies set, the client is a gateway and the others stay backends."""
    settings = load_settings(
        termii_env(redis_url, OTPSVC_CLIENTS_FILE=client_file(tmp_path), **GATEWAY_ENV)
    )
    assert settings.for_client("client-a").caller == "gateway"
    assert settings.for_client("client-b").caller == "backend"
    assert settings.for_client("client-a").end_user_id_header == "X-End-User-Id"


def test_metrics_are_not_served_through_a_proxy_without_a_token(gateway_app):
    """With no metrics token, /metrics answers a scraper that connects directly but not what a
    gateway or ingress forwards."""
    client = gateway_app.test_client()
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "192.0.2.200"}).status_code == 200
    forwarded = client.get(
        "/metrics",
        headers={"X-Forwarded-For": "203.0.113.1"},
        environ_base={"REMOTE_ADDR": GATEWAY},
    )
    assert forwarded.status_code == 404
