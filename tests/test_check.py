"""POST /otp/check, GET /otp/<id> and cancel: single use, attempt limits, expiry and ownership."""

from __future__ import annotations

import pytest

from tests.conftest import Api, FakeClock, wrong_code
from tests.fakes.termii import FakeTermii


@pytest.fixture
def started(api: Api, termii: FakeTermii) -> tuple[str, str]:
    """A pending verification's id and the code Termii was asked to read."""
    return api.start().get_json()["id"], termii.last_code()


def test_right_code_approves_once(api: Api, started):
    """The right code approves; the same code again is 404: the verification was consumed."""
    vid, code = started
    response = api.check(vid, code)
    assert response.status_code == 200
    assert response.get_json() == {"id": vid, "status": "approved", "valid": True}
    again = api.check(vid, code)
    assert again.status_code == 404
    assert again.get_json()["code"] == "not_found"
    assert api.get(vid).get_json()["status"] == "approved"


def test_wrong_code_counts_down(api: Api, started):
    """Each wrong code is 200 valid:false with one attempt fewer."""
    vid, code = started
    for remaining in (4, 3, 2, 1):
        data = api.check(vid, wrong_code(code)).get_json()
        assert data == {
            "id": vid,
            "status": "pending",
            "valid": False,
            "attempts_remaining": remaining,
        }


def test_fifth_wrong_code_locks_even_the_right_one(api: Api, started):
    """After 5 wrong codes the status is max_attempts_reached and the right code gets 429."""
    vid, code = started
    for _ in range(4):
        api.check(vid, wrong_code(code))
    last = api.check(vid, wrong_code(code)).get_json()
    assert last["status"] == "max_attempts_reached"
    assert last["attempts_remaining"] == 0
    locked = api.check(vid, code)
    assert locked.status_code == 429
    assert locked.get_json()["code"] == "max_attempts_reached"
    assert int(locked.headers["Retry-After"]) > 0
    assert api.get(vid).get_json()["status"] == "max_attempts_reached"


def test_max_check_attempts_is_a_setting(make_app, openapi, termii: FakeTermii):
    """OTPSVC_MAX_CHECK_ATTEMPTS=2 locks after two wrong codes."""
    api = Api(make_app(OTPSVC_MAX_CHECK_ATTEMPTS="2"), "client-a-key-0123456789abcdef", openapi)
    vid = api.start().get_json()["id"]
    code = termii.last_code()
    assert api.check(vid, wrong_code(code)).get_json()["attempts_remaining"] == 1
    assert api.check(vid, wrong_code(code)).get_json()["status"] == "max_attempts_reached"
    assert api.check(vid, code).status_code == 429


def test_right_code_after_wrong_ones_still_approves(api: Api, started):
    """Four wrong codes then the right one: approved, and the wrong ones stay on the record."""
    vid, code = started
    for _ in range(4):
        api.check(vid, wrong_code(code))
    assert api.check(vid, code).get_json()["valid"] is True
    assert api.get(vid).get_json()["attempts_remaining"] == 1


def test_code_of_the_wrong_length_is_422_and_costs_nothing(api: Api, started):
    """A 5-digit code for a 6-digit verification is a 422 naming 'code'; no attempt is used."""
    vid, code = started
    response = api.check(vid, code[:5])
    assert response.status_code == 422
    assert "code" in response.get_json()["errors"]
    assert api.get(vid).get_json()["attempts_remaining"] == 5


def test_check_one_second_after_expiry_fails(api: Api, started, clock: FakeClock):
    """At TTL + 1 s the right code is 404, and reading shows 'expired'."""
    vid, code = started
    clock.advance(301)
    assert api.check(vid, code).status_code == 404
    assert api.get(vid).get_json()["status"] == "expired"


def test_check_one_second_before_expiry_works(api: Api, started, clock: FakeClock):
    """At TTL - 1 s the right code still approves."""
    vid, code = started
    clock.advance(299)
    assert api.check(vid, code).get_json()["valid"] is True


def test_redis_ttl_bounds_the_record(api: Api, started, redis_client):
    """Every key the service writes has a TTL but the data's epoch marker (which must outlive
    everything: its vanishing is how a Redis that lost its data is told), and the record's TTL
    is at most the code TTL."""
    vid, _ = started
    keys = redis_client.keys("*")
    assert keys
    for key in keys:
        if key.endswith(":epoch"):
            continue
        assert redis_client.ttl(key) > 0, key
    record = next(k for k in keys if k.endswith(vid))
    assert redis_client.ttl(record) <= 300


def test_other_client_gets_404_and_changes_nothing(api: Api, api_b: Api, started):
    """Client B cannot check, read or cancel client A's verification, nor spend its attempts."""
    vid, code = started
    assert api_b.check(vid, code).status_code == 404
    assert api_b.check(vid, wrong_code(code)).status_code == 404
    assert api_b.get(vid).status_code == 404
    assert api_b.cancel(vid).status_code == 404
    data = api.get(vid).get_json()
    assert data["status"] == "pending"
    assert data["attempts_remaining"] == 5
    assert api.check(vid, code).get_json()["valid"] is True


def test_clients_have_separate_verifications_for_one_number(api: Api, api_b: Api, termii):
    """Two clients starting for the same number get two verifications, two calls."""
    first = api.start()
    second = api_b.start()
    assert first.status_code == second.status_code == 201
    assert first.get_json()["id"] != second.get_json()["id"]
    assert len(termii.calls) == 2


def test_unknown_id_is_404(api: Api):
    """A well-formed id that was never issued is 404 not_found."""
    response = api.check("0" * 36, "123456")
    assert response.status_code == 404
    assert api.get("0" * 36).status_code == 404
    assert api.cancel("0" * 36).status_code == 404


def test_malformed_id_in_a_path_is_404(api: Api):
    """A path id that cannot be a verification id is 404, never 500."""
    assert api.get("not-an-id").status_code == 404
    assert api.cancel("x" * 36).status_code == 404


def test_cancel_stops_the_code(api: Api, started):
    """After cancel the right code is 404; cancel again answers the same; reading shows canceled."""
    vid, code = started
    response = api.cancel(vid)
    assert response.status_code == 200
    assert response.get_json()["status"] == "canceled"
    assert api.check(vid, code).status_code == 404
    assert api.cancel(vid).get_json()["status"] == "canceled"
    assert api.get(vid).get_json()["status"] == "canceled"


def test_cancel_of_approved_is_404(api: Api, started):
    """An approved verification cannot be canceled."""
    vid, code = started
    api.check(vid, code)
    assert api.cancel(vid).status_code == 404


def test_cancel_cannot_lift_a_lockout(api: Api, started, termii: FakeTermii):
    """A locked verification cannot be canceled to open a fresh one with new attempts."""
    vid, code = started
    for _ in range(5):
        api.check(vid, wrong_code(code))
    response = api.cancel(vid)
    assert response.status_code == 429
    assert response.get_json()["code"] == "max_attempts_reached"
    assert api.start().status_code == 429
    assert len(termii.calls) == 1


def test_read_never_shows_code_or_verifier(api: Api, started, redis_client):
    """GET returns the documented fields only; neither the code nor the stored verifier appear."""
    vid, code = started
    response = api.get(vid)
    text = response.get_data(as_text=True)
    assert code not in text
    verifier = redis_client.hget(next(k for k in redis_client.keys("*:v:*")), "h")
    assert verifier
    assert verifier not in text


def test_new_start_after_approval_opens_a_new_verification(api: Api, started):
    """Once approved, the next start for the number is a new verification (201)."""
    vid, code = started
    api.check(vid, code)
    response = api.start()
    assert response.status_code == 201
    assert response.get_json()["id"] != vid
