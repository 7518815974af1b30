"""Bad input is a clear 4xx problem naming the field, never a 5xx."""

from __future__ import annotations

import pytest

from tests.conftest import Api
from tests.fakes.termii import FakeTermii


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "phone"),
        ({"phone": "abc"}, "phone"),
        ({"phone": 2348031234567}, "phone"),
        ({"phone": "+234803123456789012345"}, "phone"),
        ({"phone": "+999999999999"}, "phone"),
        ({"phone": "+234 803 123 4567"}, "phone"),
        ({"phone": "+２３４８０３１２３４５６７"}, "phone"),
        ({"phone": "+2348031234567", "code_length": 3}, "code_length"),
        ({"phone": "+2348031234567", "code_length": 9}, "code_length"),
        ({"phone": "+2348031234567", "code_length": "6"}, "code_length"),
        ({"phone": "+2348031234567", "code_length": True}, "code_length"),
        ({"phone": "+2348031234567", "code_length": 6.5}, "code_length"),
        ({"phone": "+2348031234567", "locale": "english"}, "locale"),
        ({"phone": "+2348031234567", "client_ref": "x" * 65}, "client_ref"),
        ({"phone": "+2348031234567", "client_ref": "bad\nref"}, "client_ref"),
        ({"phone": "+2348031234567", "extra": 1}, "extra"),
    ],
)
def test_bad_start_body_is_422_naming_the_field(api: Api, termii: FakeTermii, body, field):
    """Each invalid start body is 422 validation_error with the field in 'errors'; no call."""
    response = api.request("POST", "/otp/start", json=body)
    assert response.status_code == 422
    problem = response.get_json()
    assert problem["code"] == "validation_error"
    assert field in problem["errors"]
    assert termii.calls == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"code": "123456"}, "id"),
        ({"id": "a" * 36}, "code"),
        ({"id": "A" * 36, "code": "123456"}, "id"),
        ({"id": "a" * 36, "code": 123456}, "code"),
        ({"id": "a" * 36, "code": "12a456"}, "code"),
        ({"id": "a" * 36, "code": "١٢٣٤٥٦"}, "code"),
        ({"id": "a" * 36, "code": "123"}, "code"),
        ({"id": "a" * 36, "code": "123456789"}, "code"),
    ],
)
def test_bad_check_body_is_422_naming_the_field(api: Api, body, field):
    """Each invalid check body is 422 with the field named."""
    response = api.request("POST", "/otp/check", json=body)
    assert response.status_code == 422
    assert field in response.get_json()["errors"]


@pytest.mark.parametrize("body", ["[]", "[1, 2]", '"text"', "42", "null"])
def test_non_object_json_is_422_naming_body(api: Api, body):
    """JSON that is not an object is refused as the body."""
    response = api.request("POST", "/otp/start", data=body, content_type="application/json")
    assert response.status_code == 422
    assert "body" in response.get_json()["errors"]


def test_malformed_json_is_400(api: Api):
    """A body that is not JSON at all is 400 bad_request."""
    response = api.request("POST", "/otp/start", data='{"phone": ', content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["code"] == "bad_request"


def test_wrong_content_type_is_415(api: Api):
    """A form post is 415 unsupported_media_type."""
    response = api.request("POST", "/otp/start", data={"phone": "+2348031234567"})
    assert response.status_code == 415


def test_oversized_body_is_413(api: Api):
    """Bodies over 16 KiB are refused before parsing."""
    response = api.request(
        "POST",
        "/otp/start",
        data='{"phone": "' + "1" * 20000 + '"}',
        content_type="application/json",
    )
    assert response.status_code == 413


def test_unknown_route_and_method_are_problems(api: Api):
    """Unknown paths are 404 and wrong methods 405, both as problem documents."""
    client = api.app.test_client()
    missing = client.get("/nowhere")
    assert missing.status_code == 404
    assert missing.mimetype == "application/problem+json"
    wrong = client.delete("/otp/start")
    assert wrong.status_code == 405
    assert wrong.mimetype == "application/problem+json"
    assert "POST" in wrong.headers["Allow"]
