"""Idempotency-Key on POST /otp/start: a gateway's retry gets the first answer and rings no phone
twice; refusals about an existing verification name it."""

from __future__ import annotations

import json
import threading

import pytest
import redis

from tests.conftest import KEY_A, KEY_B, PHONE, Api, FakeClock
from tests.fakes.termii import FakeTermii


def start(api: Api, key: str | None, body: dict | None = None, raw: bytes | None = None):  # type: ignore[no-untyped-def]
    headers = {"Idempotency-Key": key} if key is not None else {}
    if raw is not None:
        headers["Content-Type"] = "application/json"
        return api.request("POST", "/otp/start", data=raw, headers=headers)
    return api.request("POST", "/otp/start", json=body or {"phone": PHONE}, headers=headers)


def test_retry_with_the_same_key_gets_the_first_answer_and_places_no_call(
    api: Api, termii: FakeTermii
):
    """Same key, same body: the first 201, byte for byte, marked as replayed; one call."""
    first = start(api, "login-7f3e")
    retry = start(api, "login-7f3e")
    assert first.status_code == retry.status_code == 201
    assert retry.get_json() == first.get_json()
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert len(termii.calls) == 1


def test_the_same_json_in_another_order_or_spacing_is_the_same_body(api: Api, termii: FakeTermii):
    first = start(api, "k1", raw=b'{"phone": "+2348031234567", "locale": "en"}')
    retry = start(api, "k1", raw=b'{"locale":"en","phone":"+2348031234567"}')
    assert retry.get_json() == first.get_json()
    assert len(termii.calls) == 1


def test_the_same_key_with_another_body_is_refused(api: Api, termii: FakeTermii):
    """422 idempotency_key_reused; the second body places no call."""
    assert start(api, "k2").status_code == 201
    response = start(api, "k2", {"phone": "+2348031234599"})
    assert response.status_code == 422
    assert response.get_json()["code"] == "idempotency_key_reused"
    assert len(termii.calls) == 1


def test_concurrent_identical_retries_place_exactly_one_call(app, openapi, termii: FakeTermii):
    """Eight copies of one request at once while the provider is slow: one call; the others are
    409 request_in_progress with Retry-After, or the first answer once it is there."""
    termii.delay = 0.5
    statuses: list[tuple[int, str | None]] = []
    barrier = threading.Barrier(8)

    def one() -> None:
        api = Api(app, KEY_A, openapi)
        barrier.wait()
        response = start(api, "gateway-retry-1")
        statuses.append((response.status_code, response.headers.get("Retry-After")))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(termii.calls) == 1
    assert sorted(s for s, _ in statuses).count(201) >= 1
    assert {s for s, _ in statuses} <= {201, 409}
    assert all(retry_after for status, retry_after in statuses if status == 409)
    assert 409 in {s for s, _ in statuses}


def test_keys_belong_to_one_client(app, openapi, termii: FakeTermii):
    """Client B's key with the same text is B's own: its start runs."""
    a, b = Api(app, KEY_A, openapi), Api(app, KEY_B, openapi)
    assert start(a, "shared-text").status_code == 201
    assert start(b, "shared-text").status_code == 201
    assert len(termii.calls) == 2


@pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9", "tab\there"])
def test_malformed_key_is_422_naming_the_header(api: Api, termii: FakeTermii, key: str):
    headers = {"Idempotency-Key": key}
    environ = {"HTTP_IDEMPOTENCY_KEY": key}  # werkzeug would refuse some of these as headers
    response = api.request(
        "POST", "/otp/start", json={"phone": PHONE}, headers={}, environ_base=environ
    )
    assert response.status_code == 422, headers
    assert "Idempotency-Key" in response.get_json()["errors"]
    assert not termii.calls


def test_quoted_key_of_the_structured_field_form_is_the_same_key(api: Api, termii: FakeTermii):
    """The draft writes the key as a structured-field string: ``"abc"`` is the key ``abc``."""
    first = start(api, "abc-123")
    retry = start(api, '"abc-123"')
    assert retry.get_json() == first.get_json()
    assert len(termii.calls) == 1


def test_the_first_answer_is_kept_24_hours_in_one_key(
    api: Api, termii: FakeTermii, redis_client: redis.Redis
):
    """One hash per client and key, in the slot of the client's index of its keys, with the
    retention TTL; the key not in clear."""
    start(api, "retention-check")
    keys = redis_client.keys("otpsvc:idem:*}:*")
    index = redis_client.keys("otpsvc:idem:*}")
    assert len(keys) == len(index) == 1
    assert "retention-check" not in keys[0]
    assert keys[0].count("{") == 1
    assert keys[0].startswith(index[0])
    assert 86_000 < redis_client.ttl(keys[0]) <= 86_400
    assert redis_client.zrange(index[0], 0, -1) == keys


def test_retention_follows_the_setting(make_app, openapi, termii, redis_client: redis.Redis):
    api = Api(make_app(OTPSVC_IDEMPOTENCY_TTL="600"), KEY_A, openapi)
    start(api, "short")
    (key,) = redis_client.keys("otpsvc:idem:*}:*")
    assert 590 < redis_client.ttl(key) <= 600


def test_refusal_about_an_existing_verification_names_it(api: Api, termii: FakeTermii):
    """A gateway whose 201 was lost retries without a key: 429 resend_too_soon names the id."""
    created = api.start().get_json()["id"]
    refused = api.start()
    assert refused.status_code == 429
    body = refused.get_json()
    assert body["code"] == "resend_too_soon"
    assert body["verification_id"] == created
    assert len(termii.calls) == 1


def test_max_sends_and_lockout_refusals_name_the_verification(
    make_app, openapi, termii: FakeTermii, clock: FakeClock
):
    api = Api(make_app(OTPSVC_MAX_SENDS="1", OTPSVC_MAX_CHECK_ATTEMPTS="1"), KEY_A, openapi)
    vid = api.start().get_json()["id"]
    clock.advance(31)
    refused = api.start().get_json()
    assert (refused["code"], refused["verification_id"]) == ("max_sends_reached", vid)
    api.check(vid, "000000" if termii.last_code() != "000000" else "111111")
    locked = api.start().get_json()
    assert (locked["code"], locked["verification_id"]) == ("max_attempts_reached", vid)


def test_a_refusal_is_not_kept_and_a_retry_is_answered_afresh(
    api: Api, termii: FakeTermii, redis_client: redis.Redis
):
    """A refusal (here the resend cooldown) changed nothing: no record is kept for it, and a
    retry with the same key is answered afresh, with the same refusal while it holds."""
    start(api, "first")
    refused = start(api, "second")
    retry = start(api, "second")
    assert refused.status_code == retry.status_code == 429
    assert retry.get_json()["code"] == refused.get_json()["code"] == "resend_too_soon"
    assert "Idempotent-Replayed" not in retry.headers
    assert len(redis_client.keys("otpsvc:idem:*}:*")) == 1


def test_refused_starts_with_new_keys_keep_no_record(
    api: Api, termii: FakeTermii, redis_client: redis.Redis
):
    """The review's memory attack: starts refused with 403, each with a new key, used to keep
    ~888 bytes each for 24 hours; now they keep no record at all."""
    for i in range(20):
        assert start(api, f"refused-{i}", {"phone": "+819012345678"}).status_code == 403
    assert redis_client.keys("otpsvc:idem:*}:*") == []
    assert termii.calls == []


def test_one_client_holds_at_most_its_cap_of_records(make_app, openapi, termii, clock: FakeClock):
    """Past OTPSVC_IDEMPOTENCY_MAX_KEYS records a client's new keys are refused (429 naming the
    limit, Retry-After until its oldest record ends); another client's keys still work."""
    app = make_app(OTPSVC_IDEMPOTENCY_MAX_KEYS="10", OTPSVC_IDEMPOTENCY_TTL="600")
    a, b = Api(app, KEY_A, openapi), Api(app, KEY_B, openapi)
    for i in range(10):
        assert start(a, f"k{i}", {"phone": f"+23480312345{i:02d}"}).status_code == 201
    full = start(a, "k10", {"phone": "+2348031234510"})
    assert full.status_code == 429
    assert (full.get_json()["limit"], full.get_json()["scope"]) == (
        "idempotency_max_keys",
        "client",
    )
    assert 590 <= int(full.headers["Retry-After"]) <= 600
    assert start(a, "k0", {"phone": "+2348031234500"}).headers["Idempotent-Replayed"] == "true"
    assert start(b, "k10", {"phone": "+2348031234510"}).status_code == 201
    clock.advance(601)
    assert start(a, "k11", {"phone": "+2348031234511"}).status_code == 201


def test_answers_that_changed_nothing_are_not_kept(make_app, openapi, termii, clock: FakeClock):
    """A request-limit 429 releases the key: once the window passes the same key runs."""
    api = Api(make_app(OTPSVC_RATE_LIMIT_START_IP="1 per minute"), KEY_A, openapi)
    assert start(api, "a", {"phone": "+2348031234500"}).status_code == 201
    assert start(api, "b", {"phone": "+2348031234501"}).status_code == 429
    clock.advance(61)
    retried = start(api, "b", {"phone": "+2348031234501"})
    assert retried.status_code == 201
    assert "Idempotent-Replayed" not in retried.headers
    assert len(termii.calls) == 2


def test_a_provider_failure_is_kept_so_a_retry_does_not_call_again(api: Api, termii: FakeTermii):
    """502 delivery_failed is the request's outcome: a retry with the key gets it, no new call."""
    termii.mode = "server_error"
    first = start(api, "p-fail")
    assert first.status_code == 502
    attempts = len(termii.calls)
    termii.mode = "ok"
    retry = start(api, "p-fail")
    assert retry.status_code == 502
    assert json.loads(retry.data) == json.loads(first.data)
    assert len(termii.calls) == attempts
