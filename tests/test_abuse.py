"""Toll-fraud and abuse defences: every refusal happens before any provider is asked to call."""

from __future__ import annotations

import json
import logging

import pytest
import redis

from otpsvc.logs import JsonFormatter
from tests.conftest import KEY_A, KEY_B, Api, FakeClock, wrong_code
from tests.fakes.termii import FakeTermii

NG = "+2348031234567"


def starts(api: Api, phones, *, ip: str = "127.0.0.1") -> list[int]:
    return [
        api.request(
            "POST", "/otp/start", json={"phone": p}, environ_base={"REMOTE_ADDR": ip}
        ).status_code
        for p in phones
    ]


def test_country_outside_the_allowlist_is_403_without_a_call(api: Api, termii: FakeTermii):
    """A Japanese number when Japan is not allowed: 403 country_not_allowed, Termii untouched."""
    response = api.start("+819012345678")
    assert response.status_code == 403
    assert response.get_json()["code"] == "country_not_allowed"
    assert termii.requests == []


@pytest.mark.parametrize(
    ("number", "kind"),
    [
        ("+449012345678", "premium rate"),
        ("+4918012345", "shared cost"),
        ("+445512345678", "UAN"),
        ("+447012345678", "personal number"),
        ("+448001234567", "toll free"),
        ("+445612345678", "VoIP"),
    ],
)
def test_costly_number_types_are_refused_without_a_call(api: Api, termii: FakeTermii, number, kind):
    """Premium-rate, shared-cost, UAN, personal, toll-free and VoIP numbers: 422, no call."""
    response = api.start(number)
    assert response.status_code == 422, kind
    problem = response.get_json()
    assert problem["code"] == "number_type_not_allowed"
    assert "phone" in problem["errors"]
    assert termii.requests == []


def test_fixed_lines_are_allowed_by_default(api: Api, termii: FakeTermii):
    """A Nigerian fixed line may be called (mobile and fixed line are the default types)."""
    assert api.start("+2342033123456").status_code == 201


@pytest.mark.parametrize(
    ("setting", "phones", "ok_after"),
    [
        ("OTPSVC_VELOCITY_PHONE", [NG, NG, NG], None),
        (
            "OTPSVC_VELOCITY_PREFIX",
            ["+2348031234561", "+2348031234562", "+2348031234563"],
            "+2348051234563",
        ),
        (
            "OTPSVC_VELOCITY_COUNTRY",
            ["+2348031234561", "+2348051234562", "+2348061234563"],
            "+4915123456789",
        ),
        ("OTPSVC_VELOCITY_IP", ["+2348031234561", "+2348051234562", "+4915123456789"], None),
    ],
)
def test_velocity_limits_refuse_the_third_call(
    make_app, openapi, termii: FakeTermii, clock: FakeClock, setting, phones, ok_after
):
    """With a limit of 2 calls an hour, the third is 429 without a call; others still pass."""
    api = Api(make_app(**{setting: "2 per hour", "OTPSVC_RESEND_COOLDOWN": "0"}), KEY_A, openapi)
    assert starts(api, phones[:2]) == [201, 200 if phones[0] == phones[1] else 201]
    refused = api.start(phones[2])
    assert refused.status_code == 429
    assert refused.get_json()["code"] == "rate_limited"
    assert 0 < int(refused.headers["Retry-After"]) <= 3600
    assert len(termii.calls) == 2
    if ok_after:
        assert api.start(ok_after).status_code == 201
    clock.advance(3600)
    assert api.start(phones[2]).status_code in (200, 201)


def test_velocity_per_ip_counts_calls_from_that_address_only(make_app, openapi, termii):
    """Another client IP has its own count."""
    api = Api(make_app(OTPSVC_VELOCITY_IP="1 per hour"), KEY_A, openapi)
    assert starts(api, ["+2348031234561"], ip="198.51.100.1") == [201]
    assert starts(api, ["+2348031234562"], ip="198.51.100.1") == [429]
    assert starts(api, ["+2348031234563"], ip="198.51.100.2") == [201]


def test_velocity_per_client(make_app, openapi, termii: FakeTermii):
    """A client over OTPSVC_VELOCITY_CLIENT is refused; another client is not."""
    app = make_app(OTPSVC_VELOCITY_CLIENT="1 per hour")
    a, b = Api(app, KEY_A, openapi), Api(app, KEY_B, openapi)
    assert a.start("+2348031234561").status_code == 201
    assert a.start("+2348031234562").status_code == 429
    assert b.start("+2348031234563").status_code == 201
    assert len(termii.calls) == 2


def test_call_budget_is_shared_by_all_workers(make_app, openapi, termii: FakeTermii):
    """The hourly budget spans app instances: past it, 503 calls_suspended and no call."""
    one = Api(make_app(OTPSVC_CALL_BUDGET="3 per hour"), KEY_A, openapi)
    two = Api(make_app(OTPSVC_CALL_BUDGET="3 per hour"), KEY_A, openapi)
    assert starts(one, ["+2348031234561", "+2348031234562"]) == [201, 201]
    assert starts(two, ["+2348031234563"]) == [201]
    refused = two.start("+2348031234564")
    assert refused.status_code == 503
    assert refused.get_json()["code"] == "calls_suspended"
    assert int(refused.headers["Retry-After"]) > 0
    assert len(termii.calls) == 3


def test_kill_switch_setting_stops_every_call(make_app, openapi, termii: FakeTermii):
    """OTPSVC_CALLS_ENABLED=false: 503 calls_suspended and Termii is never asked."""
    api = Api(make_app(OTPSVC_CALLS_ENABLED="false"), KEY_A, openapi)
    response = api.start()
    assert response.status_code == 503
    assert response.get_json()["code"] == "calls_suspended"
    assert termii.requests == []


def test_runtime_kill_switch_in_redis(api: Api, termii: FakeTermii, redis_client):
    """Setting the kill key in Redis stops calls from every worker at once, without a restart."""
    app_store = api.app.extensions["otpsvc"].service.velocity
    redis_client.set(app_store.kill_key, "1")
    assert api.start().status_code == 503
    redis_client.delete(app_store.kill_key)
    assert api.start().status_code == 201
    assert len(termii.calls) == 1


def test_refused_start_hands_its_count_back(make_app, openapi, termii: FakeTermii, clock):
    """A start refused by the cooldown does not use up the number's calls."""
    api = Api(make_app(OTPSVC_VELOCITY_PHONE="2 per hour"), KEY_A, openapi)
    assert api.start().status_code == 201
    assert api.start().status_code == 429  # cooldown: no call, nothing counted
    clock.advance(31)
    assert api.start().status_code == 200
    assert len(termii.calls) == 2


def test_failed_checks_per_number_outlive_new_codes(make_app, openapi, termii: FakeTermii, clock):
    """Wrong codes count per number across verifications; past the daily cap, starts are refused."""
    api = Api(
        make_app(OTPSVC_MAX_CHECK_ATTEMPTS="2", OTPSVC_MAX_FAILED_CHECKS_PER_NUMBER="3"),
        KEY_A,
        openapi,
    )
    first = api.start().get_json()["id"]
    for _ in range(2):
        api.check(first, wrong_code(termii.last_code()))
    clock.advance(301)
    second = api.start().get_json()["id"]
    api.check(second, wrong_code(termii.last_code()))
    clock.advance(301)
    refused = api.start()
    assert refused.status_code == 429
    assert refused.get_json()["code"] == "too_many_failed_checks"
    assert int(refused.headers["Retry-After"]) > 80_000
    assert len(termii.calls) == 2


def test_right_codes_do_not_count_as_failures(make_app, openapi, termii: FakeTermii):
    """Approvals hand their attempt back to the per-number count too."""
    api = Api(make_app(OTPSVC_MAX_FAILED_CHECKS_PER_NUMBER="1"), KEY_A, openapi)
    for _ in range(3):
        vid = api.start().get_json()["id"]
        assert api.check(vid, termii.last_code()).get_json()["valid"] is True


def test_fraud_blocks_and_limit_hits_are_audited(make_app, openapi, termii, caplog):
    """Each refusal leaves one JSON audit line with the masked number, never the full one."""
    caplog.set_level(logging.INFO, logger="otpsvc.audit")
    # The per-IP request limit counts every request, refused ones included: 3 pass, the 4th hits it.
    api = Api(make_app(OTPSVC_RATE_LIMIT_START_IP="3 per minute"), KEY_A, openapi)
    api.start("+819012345678")  # country
    api.start("+449012345678")  # number type
    api.start(NG)
    api.start(NG)  # limit hit
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records]
    reasons = [line.get("reason") for line in lines if line.get("event") == "fraud_block"]
    assert reasons == ["country", "number_type"]
    assert [line.get("event") for line in lines].count("limit_hit") == 1
    text = "\n".join(json.dumps(line) for line in lines)
    assert "819012345678" not in text
    assert "+81*******678" in text


def test_redis_slow_gives_a_bounded_503(make_app, openapi, termii: FakeTermii, redis_url):
    """Redis paused for 2 s: a check answers 503 within about the 0.3 s Redis timeout."""
    import time

    api = Api(make_app(OTPSVC_REDIS_TIMEOUT="0.3"), KEY_A, openapi)
    vid = api.start().get_json()["id"]
    code = termii.last_code()
    admin = redis.Redis.from_url(redis_url)
    admin.execute_command("CLIENT", "PAUSE", "2000", "ALL")
    started = time.monotonic()
    response = api.check(vid, code)
    elapsed = time.monotonic() - started
    admin.execute_command("CLIENT", "UNPAUSE")
    assert response.status_code == 503
    assert elapsed < 1.5
    pytest.FIGURES["redis paused 2 s: check"] = f"503 store_unavailable in {elapsed * 1000:.0f} ms"
    assert api.check(vid, code).get_json()["valid"] is True
