"""API keys: Bearer only, every key checked, no key ever echoed or logged."""

from __future__ import annotations

import logging

import pytest

from tests.conftest import KEY_A, Api


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer ", f"Basic {KEY_A}", "Bearer wrong-key-0123456789abcdef", KEY_A],
)
def test_missing_or_wrong_key_is_401(app, openapi, termii, header):
    """No key, another scheme or an unknown key: 401 with WWW-Authenticate, and no call."""
    api = Api(app, None, openapi)
    headers = {} if header is None else {"Authorization": header}
    response = api.request("POST", "/otp/start", json={"phone": "+2348031234567"}, headers=headers)
    assert response.status_code == 401
    assert response.get_json()["code"] == "unauthorized"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert termii.calls == []


def test_auth_comes_before_validation(app, openapi):
    """An unauthenticated request with a bad body is 401, not 422: nothing is said to strangers."""
    api = Api(app, None, openapi)
    assert api.request("POST", "/otp/check", json={"id": 1}).status_code == 401


def test_keys_never_reach_logs_or_responses(app, openapi, caplog):
    """Neither a valid nor an invalid key appears in any log line or response."""
    caplog.set_level(logging.DEBUG)
    good = Api(app, KEY_A, openapi)
    bad = Api(app, "stranger-key-0123456789abcdef", openapi)
    texts = [good.start().get_data(as_text=True), bad.start().get_data(as_text=True)]
    joined = "\n".join(texts + [r.getMessage() for r in caplog.records])
    assert KEY_A not in joined
    assert "stranger-key-0123456789abcdef" not in joined


def test_health_and_contract_need_no_key(app, openapi):
    """/healthz, /readyz and /openapi.yaml are open."""
    api = Api(app, None, openapi)
    assert api.request("GET", "/healthz").get_json() == {"status": "ok"}
    assert api.request("GET", "/readyz").status_code == 200
    assert api.request("GET", "/openapi.yaml").data.startswith(b"openapi: 3.1")
