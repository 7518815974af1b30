"""X-Request-Id and W3C traceparent: one id through the response, problems and log lines, and
the caller's trace carried on to the provider."""

from __future__ import annotations

import io
import json
import logging

import pytest

from otpsvc.logs import JsonFormatter, RequestIdFilter
from otpsvc.requestcontext import parse_traceparent
from tests.conftest import PHONE, Api
from tests.fakes.termii import FakeTermii

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


def test_a_good_request_id_is_echoed_and_named_in_problems(api: Api):
    response = api.request("GET", "/otp/" + "0" * 36, headers={"X-Request-Id": "gw-17.a_b"})
    assert response.status_code == 404
    assert response.headers["X-Request-Id"] == "gw-17.a_b"
    assert response.get_json()["request_id"] == "gw-17.a_b"


@pytest.mark.parametrize("presented", ["", "x" * 65, "has space", "semi;colon", "caf\u00e9"])
def test_a_bad_request_id_is_replaced(api: Api, presented: str):
    response = api.request("GET", "/otp/" + "0" * 36, environ_base={"HTTP_X_REQUEST_ID": presented})
    generated = response.headers["X-Request-Id"]
    assert generated != presented
    assert len(generated) == 32
    assert response.get_json()["request_id"] == generated


def test_every_log_and_audit_line_of_a_request_carries_its_id(api: Api, termii: FakeTermii):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    logger = logging.getLogger("otpsvc")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        api.request("POST", "/otp/start", json={"phone": PHONE}, headers={"X-Request-Id": "r-1"})
        termii.mode = "server_error"
        api.request(
            "POST", "/otp/start", json={"phone": "+2348031234500"}, headers={"X-Request-Id": "r-2"}
        )
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert {line.get("event") for line in lines} >= {"start", "delivery_failed"}
    assert {line["request_id"] for line in lines} == {"r-1", "r-2"}
    warnings = [line for line in lines if line["level"] == "WARNING"]
    assert warnings
    assert all(line["request_id"] == "r-2" for line in warnings)


def test_the_callers_trace_is_carried_on_to_the_provider(api: Api, termii: FakeTermii):
    headers = {"traceparent": f"00-{TRACE}-{PARENT}-01"}
    api.request("POST", "/otp/start", json={"phone": PHONE}, headers=headers)
    sent = parse_traceparent(termii.calls[-1].headers["Traceparent"])
    assert sent is not None
    assert (sent.trace_id, sent.flags) == (TRACE, "01")
    assert sent.parent_id != PARENT


@pytest.mark.parametrize(
    "bad",
    [
        f"00-{'0' * 32}-{PARENT}-01",
        f"00-{TRACE}-{'0' * 16}-01",
        f"ff-{TRACE}-{PARENT}-01",
        f"00-{TRACE.upper()}-{PARENT}-01",
        f"00-{TRACE}-{PARENT}-01-extra",
        "garbage",
    ],
)
def test_an_invalid_traceparent_starts_a_new_trace(api: Api, termii: FakeTermii, bad: str):
    api.request("POST", "/otp/start", json={"phone": PHONE}, headers={"traceparent": bad})
    sent = parse_traceparent(termii.calls[-1].headers["Traceparent"])
    assert sent is not None
    assert sent.trace_id != TRACE


def test_a_later_version_traceparent_is_read_by_its_first_fields():
    context = parse_traceparent(f"01-{TRACE}-{PARENT}-01-future")
    assert context is not None
    assert context.trace_id == TRACE
