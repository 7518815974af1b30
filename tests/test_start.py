"""POST /otp/start: opening, resending and refusing verifications, and what reaches Termii."""

from __future__ import annotations

import time

import pytest

from tests.conftest import PHONE, PHONE_MASKED, TERMII_KEY, Api, FakeClock, wrong_code
from tests.fakes.termii import FakeTermii


def test_start_places_one_termii_call_with_the_documented_body(api: Api, termii: FakeTermii):
    """A start sends Termii api_key, the number without '+', and the code as a 6-digit number."""
    response = api.start()
    assert response.status_code == 201
    assert len(termii.calls) == 1
    body = termii.calls[0].json
    assert body["api_key"] == TERMII_KEY
    assert body["phone_number"] == "2348031234567"
    assert isinstance(body["code"], int)
    assert 100000 <= body["code"] <= 999999
    assert termii.calls[0].headers["Content-Type"] == "application/json"


def test_start_answers_with_the_verification_and_no_secret(api: Api, termii: FakeTermii):
    """201 carries the documented fields, a masked number, and nothing that holds the code."""
    data = api.start(client_ref="order-17").get_json()
    assert data["status"] == "pending"
    assert data["phone"] == PHONE_MASKED
    assert data["code_length"] == 6
    assert data["attempts_remaining"] == 5
    assert data["sends"] == 1
    assert data["provider"] == "termii"
    assert data["client_ref"] == "order-17"
    assert data["delivery"] == {"status": "queued", "provider_message_id": "453166532802459832"}
    assert data["expires_at"].endswith("Z")
    assert termii.last_code() not in str(data)


def test_expiry_and_resend_times_follow_the_settings(make_app, openapi, clock: FakeClock):
    """expires_at is now + OTPSVC_CODE_TTL, resend_available_at is now + OTPSVC_RESEND_COOLDOWN."""
    api = Api(
        make_app(OTPSVC_CODE_TTL="120", OTPSVC_RESEND_COOLDOWN="45"),
        "client-a-key-0123456789abcdef",
        openapi,
    )
    data = api.start().get_json()
    from datetime import datetime

    expires = datetime.fromisoformat(data["expires_at"]).timestamp()
    resend = datetime.fromisoformat(data["resend_available_at"]).timestamp()
    assert expires == pytest.approx(clock.now + 120, abs=0.01)
    assert resend == pytest.approx(clock.now + 45, abs=0.01)


def test_number_without_plus_is_normalised(api: Api, termii: FakeTermii):
    """'2348031234567' and '+2348031234567' are the same number (same open verification)."""
    first = api.start("2348031234567")
    assert first.status_code == 201
    second = api.start(PHONE)
    assert second.status_code == 429
    assert second.get_json()["code"] == "resend_too_soon"
    assert len(termii.calls) == 1


@pytest.mark.parametrize("length", [4, 5, 7, 8])
def test_code_length_is_exact(api: Api, termii: FakeTermii, length: int):
    """The requested length is the spoken code's length, with no leading zero for Termii."""
    response = api.start(code_length=length)
    assert response.get_json()["code_length"] == length
    code = termii.last_code()
    assert len(code) == length
    assert code[0] != "0"


def test_resend_keeps_the_id_issues_a_new_code_and_kills_the_old(
    api: Api, termii: FakeTermii, clock: FakeClock
):
    """A second start after the cooldown: 200, same id, new call; the first code no longer works."""
    first = api.start().get_json()
    old_code = termii.last_code()
    clock.advance(31)
    second = api.start()
    assert second.status_code == 200
    data = second.get_json()
    assert data["id"] == first["id"]
    assert data["sends"] == 2
    assert len(termii.calls) == 2
    new_code = termii.last_code()
    if new_code != old_code:
        assert api.check(first["id"], old_code).get_json()["valid"] is False
    assert api.check(first["id"], new_code).get_json()["valid"] is True


def test_resend_does_not_reset_attempts(api: Api, termii: FakeTermii, clock: FakeClock):
    """Wrong checks made before a resend still count after it."""
    vid = api.start().get_json()["id"]
    for _ in range(3):
        api.check(vid, wrong_code(termii.last_code()))
    clock.advance(31)
    data = api.start().get_json()
    assert data["attempts_remaining"] == 2


def test_resend_before_cooldown_is_429_with_retry_after_and_no_call(
    api: Api, termii: FakeTermii, clock: FakeClock
):
    """Inside the 30 s cooldown: 429 resend_too_soon, Retry-After counts down, Termii not called."""
    api.start()
    clock.advance(10)
    response = api.start()
    assert response.status_code == 429
    assert response.get_json()["code"] == "resend_too_soon"
    assert response.headers["Retry-After"] == "20"
    assert len(termii.calls) == 1


def test_cooldown_doubles_after_each_send(api: Api, termii: FakeTermii, clock: FakeClock):
    """Resends are allowed after 30 s, then 60 s, then 120 s."""
    api.start()
    for wait in (30, 60, 120):
        clock.advance(wait - 1)
        assert api.start().status_code == 429
        clock.advance(1)
        assert api.start().status_code == 200
    assert len(termii.calls) == 4


def test_sends_stop_at_the_maximum(make_app, openapi, termii: FakeTermii, clock: FakeClock):
    """Past OTPSVC_MAX_SENDS a start is 429 max_sends_reached and places no call."""
    api = Api(
        make_app(OTPSVC_MAX_SENDS="2", OTPSVC_RESEND_COOLDOWN="1"),
        "client-a-key-0123456789abcdef",
        openapi,
    )
    api.start()
    clock.advance(1)
    assert api.start().status_code == 200
    clock.advance(60)
    response = api.start()
    assert response.status_code == 429
    assert response.get_json()["code"] == "max_sends_reached"
    assert int(response.headers["Retry-After"]) > 0
    assert len(termii.calls) == 2


def test_after_expiry_a_start_opens_a_new_verification(
    api: Api, termii: FakeTermii, clock: FakeClock
):
    """An expired verification is not resent: a new one is opened with a new id."""
    first = api.start().get_json()
    clock.advance(301)
    second = api.start()
    assert second.status_code == 201
    assert second.get_json()["id"] != first["id"]


def test_locked_number_cannot_start_again_until_expiry(
    api: Api, termii: FakeTermii, clock: FakeClock
):
    """After the attempts are used up, starts for that number are 429 until the lock expires."""
    vid = api.start().get_json()["id"]
    code = termii.last_code()
    for _ in range(5):
        api.check(vid, wrong_code(code))
    clock.advance(60)
    response = api.start()
    assert response.status_code == 429
    assert response.get_json()["code"] == "max_attempts_reached"
    assert len(termii.calls) == 1
    clock.advance(241)
    assert api.start().status_code == 201


@pytest.mark.parametrize(
    "mode", ["unauthorized", "forbidden", "inactive", "rate_limited", "server_error", "not_json"]
)
def test_provider_refusal_is_502_and_leaves_no_usable_code(api: Api, termii: FakeTermii, mode: str):
    """Termii's documented errors give 502 delivery_failed; the verification is failed and dead."""
    termii.mode = mode
    response = api.start()
    assert response.status_code == 502
    problem = response.get_json()
    assert problem["code"] == "delivery_failed"
    code = termii.last_code()
    assert code not in response.get_data(as_text=True)
    assert api.get(problem["id"]).get_json()["status"] == "failed"
    assert api.check(problem["id"], code).status_code == 404


def test_after_a_failed_first_call_a_new_start_opens_a_new_verification(
    api: Api, termii: FakeTermii
):
    """A dead verification does not block the number: the next start gets a new id and a call."""
    termii.mode = "server_error"
    failed_id = api.start().get_json()["id"]
    termii.mode = "ok"
    response = api.start()
    assert response.status_code == 201
    assert response.get_json()["id"] != failed_id


def test_failed_resend_keeps_attempts_and_lifts_the_cooldown(
    api: Api, termii: FakeTermii, clock: FakeClock
):
    """A refused resend: 502, old code dead, attempts kept, and a retry is allowed at once."""
    vid = api.start().get_json()["id"]
    old_code = termii.last_code()
    api.check(vid, wrong_code(old_code))
    clock.advance(31)
    termii.mode = "server_error"
    assert api.start().status_code == 502
    data = api.get(vid).get_json()
    assert data["status"] == "pending"
    assert data["attempts_remaining"] == 4
    assert data["delivery"]["status"] == "failed"
    termii.mode = "ok"
    retry = api.start()
    assert retry.status_code == 200
    assert api.check(vid, termii.last_code()).get_json()["valid"] is True


def test_unreachable_provider_is_502(make_app, openapi):
    """Connection refused is a definite failure: 502 at once, nothing usable."""
    from otpsvc.dev.redis_server import free_port

    api = Api(
        make_app(OTPSVC_TERMII_BASE_URL=f"http://127.0.0.1:{free_port()}"),
        "client-a-key-0123456789abcdef",
        openapi,
    )
    response = api.start()
    assert response.status_code == 502
    assert response.get_json()["code"] == "delivery_failed"


def test_a_connection_dropped_after_the_request_is_ambiguous(
    make_app, openapi, termii: FakeTermii, sevenio
):
    """The provider read the request and closed the connection without answering: the call may
    be placed, so no second provider is asked and the start answers 201, delivery 'unknown'."""
    api = Api(make_app(OTPSVC_PROVIDERS="termii,sevenio"), "client-a-key-0123456789abcdef", openapi)
    termii.drop = True
    response = api.start()
    assert response.status_code == 201
    assert response.get_json()["delivery"]["status"] == "unknown"
    assert len(termii.calls) == 1
    assert sevenio.calls == []


def test_hanging_provider_is_bounded_and_never_called_twice(make_app, openapi, termii: FakeTermii):
    """A read timeout answers within the timeout, reports delivery 'unknown', and does not retry."""
    api = Api(
        make_app(OTPSVC_PROVIDER_READ_TIMEOUT="0.5"), "client-a-key-0123456789abcdef", openapi
    )
    termii.hang = True
    started = time.monotonic()
    response = api.start()
    elapsed = time.monotonic() - started
    assert response.status_code == 201
    assert response.get_json()["delivery"]["status"] == "unknown"
    assert len(termii.calls) == 1
    assert elapsed < 5
    pytest.FIGURES["provider hanging, 0.5 s read timeout"] = (  # type: ignore[attr-defined]
        f"201 delivery 'unknown' in {elapsed * 1000:.0f} ms, 1 request (no repeat)"
    )
