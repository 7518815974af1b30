"""OTPSVC_TEST_NUMBERS: numbers that always work without a call, until their last day."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest

from otpsvc.config import load_settings
from otpsvc.errors import ConfigError
from tests.conftest import KEY_A, KEY_B, Api, FakeClock, termii_env
from tests.fakes.termii import FakeTermii

REVIEW = "+2348000000001"  # toll-free: never called, so its number type does not matter
MOBILE = "+2348031110000"


def entry(number: str, code: str, last_day: datetime) -> str:
    return f"{number}={code}@{last_day.date().isoformat()}"


@pytest.fixture
def today(clock: FakeClock) -> datetime:
    return datetime.fromtimestamp(clock(), UTC)


def test_a_test_number_places_no_call_and_its_fixed_code_approves_once(
    make_app, openapi, termii: FakeTermii, today: datetime, caplog
):
    caplog.set_level(logging.INFO, logger="otpsvc.audit")
    app = make_app(OTPSVC_TEST_NUMBERS=entry(REVIEW, "482913", today))
    api = Api(app, KEY_A, openapi)
    started = api.start(REVIEW)
    assert started.status_code == 201
    data = started.get_json()
    assert data["provider"] == "test"
    assert data["code_length"] == 6
    assert not termii.calls
    approved = api.check(data["id"], "482913")
    assert approved.get_json()["valid"] is True
    assert api.check(data["id"], "482913").status_code == 404
    events = [getattr(r, "audit", {}).get("event") for r in caplog.records]
    assert events.count("test_number") == 2
    assert "482913" not in caplog.text


def test_the_fixed_code_meets_the_attempt_limit(
    make_app, openapi, termii: FakeTermii, today: datetime
):
    app = make_app(OTPSVC_TEST_NUMBERS=entry(REVIEW, "4829", today), OTPSVC_MAX_CHECK_ATTEMPTS="2")
    api = Api(app, KEY_A, openapi)
    vid = api.start(REVIEW).get_json()["id"]
    assert api.check(vid, "1111").get_json()["valid"] is False
    assert api.check(vid, "2222").get_json()["status"] == "max_attempts_reached"
    assert api.check(vid, "4829").status_code == 429


def test_the_fixed_code_expires_with_its_verification(
    make_app, openapi, today: datetime, clock: FakeClock
):
    api = Api(make_app(OTPSVC_TEST_NUMBERS=entry(REVIEW, "482913", today)), KEY_A, openapi)
    vid = api.start(REVIEW).get_json()["id"]
    clock.advance(301)
    assert api.check(vid, "482913").status_code == 404


def test_test_numbers_count_against_no_call_budget(
    make_app, openapi, termii: FakeTermii, today: datetime, clock: FakeClock
):
    """With a budget of one call an hour, the test number still works again and again, and the
    one real call is still placed."""
    app = make_app(
        OTPSVC_TEST_NUMBERS=entry(REVIEW, "482913", today),
        OTPSVC_CALL_BUDGET="1 per hour",
        OTPSVC_VELOCITY_PHONE="1 per hour",
    )
    api = Api(app, KEY_A, openapi)
    for _ in range(3):
        vid = api.start(REVIEW).get_json()["id"]
        assert api.check(vid, "482913").get_json()["valid"] is True
        clock.advance(1)
    assert api.start(MOBILE).status_code == 201
    assert len(termii.calls) == 1


def test_after_its_last_day_a_test_number_is_ordinary_and_start_up_warns(
    make_app, openapi, termii: FakeTermii, today: datetime, caplog
):
    yesterday = today - timedelta(days=1)
    caplog.set_level(logging.WARNING, logger="otpsvc")
    app = make_app(OTPSVC_TEST_NUMBERS=entry(MOBILE, "482913", yesterday))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("+234*******000" in w and "expired" in w for w in warnings), warnings
    assert MOBILE not in caplog.text
    api = Api(app, KEY_A, openapi)
    data = api.start(MOBILE).get_json()
    assert data["provider"] == "termii"
    assert len(termii.calls) == 1
    if termii.last_code() != "482913":
        assert api.check(data["id"], "482913").get_json()["valid"] is False


def test_the_last_day_is_a_whole_utc_day(
    make_app, openapi, termii: FakeTermii, today: datetime, clock: FakeClock
):
    """A number valid through today works until midnight UTC, and not after."""
    app = make_app(OTPSVC_TEST_NUMBERS=entry(MOBILE, "482913", today))
    api = Api(app, KEY_A, openapi)
    assert api.start(MOBILE).get_json()["provider"] == "test"
    midnight = datetime.combine(today.date() + timedelta(days=1), datetime.min.time(), UTC)
    clock.advance(midnight.timestamp() - clock() + 1)
    assert api.start(MOBILE).get_json()["provider"] == "termii"


def test_keypress_mode_is_refused_for_a_test_number(make_app, openapi, today: datetime):
    app = make_app(OTPSVC_TEST_NUMBERS=entry(REVIEW, "482913", today))
    response = Api(app, KEY_A, openapi).start(REVIEW, mode="keypress")
    assert response.status_code == 422
    assert "mode" in response.get_json()["errors"]


def test_a_test_number_outside_the_allowlist_is_a_configuration_error(redis_url: str):
    env = termii_env(
        redis_url,
        OTPSVC_ALLOWED_COUNTRIES="NG",
        OTPSVC_TEST_NUMBERS="+4915112345678=482913@2030-01-01",
    )
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert "OTPSVC_TEST_NUMBERS" in str(info.value)
    assert "+4915112345678" not in str(info.value)


def test_a_last_day_far_ahead_is_refused(redis_url: str, today: datetime):
    """A test number is a standing way past verification: a last day of 9999-12-31 (or any past
    OTPSVC_TEST_NUMBER_MAX_DAYS, 90 by default) is a configuration error, not a silent forever."""
    for day in ("9999-12-31", (today + timedelta(days=91)).date().isoformat()):
        env = termii_env(redis_url, OTPSVC_TEST_NUMBERS=f"{REVIEW}=482913@{day}")
        with pytest.raises(ConfigError) as info:
            load_settings(env)
        assert "OTPSVC_TEST_NUMBER_MAX_DAYS" in str(info.value)
    ok = termii_env(redis_url, OTPSVC_TEST_NUMBERS=entry(REVIEW, "482913", today + timedelta(89)))
    assert load_settings(ok).test_numbers[0].client is None


def test_a_number_scoped_to_a_client_is_ordinary_for_the_others(
    make_app, openapi, termii: FakeTermii, today: datetime
):
    """``client-b:+number=code@day``: the review number of one app is not every app's; for
    another client it is an ordinary number (called, its fixed code useless)."""
    app = make_app(OTPSVC_TEST_NUMBERS="client-b:" + entry(MOBILE, "482913", today))
    other = Api(app, KEY_A, openapi).start(MOBILE).get_json()
    assert other["provider"] == "termii"
    assert len(termii.calls) == 1
    own = Api(app, KEY_B, openapi).start(MOBILE).get_json()
    assert own["provider"] == "test"
    assert Api(app, KEY_B, openapi).check(own["id"], "482913").get_json()["valid"] is True
    assert len(termii.calls) == 1


def test_a_test_number_works_while_calls_are_suspended(
    make_app, openapi, termii: FakeTermii, today: datetime
):
    """The kill switch stops calls; a test number places none, so it keeps working (app-store
    review does not stop during an incident). Documented in the README's test numbers."""
    app = make_app(OTPSVC_TEST_NUMBERS=entry(REVIEW, "482913", today), OTPSVC_CALLS_ENABLED="false")
    api = Api(app, KEY_A, openapi)
    assert api.start(MOBILE).status_code == 503
    assert api.start(REVIEW).status_code == 201
    assert termii.calls == []
