"""The plaintext code, the full number and the keys never reach Redis, logs or responses."""

from __future__ import annotations

import logging

from tests.conftest import KEY_A, PHONE, SECRET, TERMII_KEY, Api, FakeClock, wrong_code
from tests.fakes.termii import FakeTermii


def redis_dump(client) -> str:
    """Every key name and every value stored, as one text."""
    parts = []
    for key in client.scan_iter("*"):
        parts.append(key)
        kind = client.type(key)
        if kind == "string" and ":persons:" in key:
            # A HyperLogLog of keyed end-user names (registers, no text): its count only.
            parts.append(str(client.pfcount(key)))
        elif kind == "string":
            parts.append(client.get(key))
        elif kind == "hash":
            parts.extend(f"{k}={v}" for k, v in client.hgetall(key).items())
        elif kind == "list":
            parts.extend(client.lrange(key, 0, -1))
        elif kind == "zset":
            parts.extend(client.zrange(key, 0, -1))
        elif kind == "set":
            parts.extend(client.smembers(key))
    return "\n".join(parts)


def test_a_whole_lifecycle_leaves_no_secret_behind(
    api: Api, termii: FakeTermii, redis_client, caplog, clock: FakeClock
):
    """Start, resend, wrong and right checks: no code, number, key or secret in Redis or logs."""
    caplog.set_level(logging.DEBUG)
    bodies = []
    first = api.start()
    bodies.append(first.get_data(as_text=True))
    vid = first.get_json()["id"]
    clock.advance(31)
    bodies.append(api.start().get_data(as_text=True))
    code = termii.last_code()
    bodies.append(api.check(vid, wrong_code(code)).get_data(as_text=True))
    stored = redis_dump(redis_client)
    bodies.append(api.check(vid, code).get_data(as_text=True))
    bodies.append(api.get(vid).get_data(as_text=True))
    logs = "\n".join(f"{r.name} {r.getMessage()} {getattr(r, 'audit', '')}" for r in caplog.records)

    everything = "\n".join([stored, redis_dump(redis_client), logs, *bodies])
    for code_sent in termii.codes():
        assert code_sent not in everything
    for secret in (PHONE, PHONE.lstrip("+"), KEY_A, TERMII_KEY, SECRET):
        assert secret not in everything
    assert "+234*******567" in logs


def test_failed_delivery_logs_no_secret(api: Api, termii: FakeTermii, caplog):
    """A provider failure is logged with the provider's words, never the code or the number."""
    caplog.set_level(logging.DEBUG)
    termii.mode = "server_error"
    api.start()
    logs = "\n".join(r.getMessage() for r in caplog.records)
    assert "termii" in logs
    assert termii.last_code() not in logs
    assert PHONE.lstrip("+") not in logs


def test_provider_error_text_echoing_the_number_is_scrubbed(api: Api, termii: FakeTermii, caplog):
    """A provider error that repeats the number (and the code) is logged with neither."""
    caplog.set_level(logging.DEBUG)
    termii.mode = "echo_number"
    assert api.start().status_code == 502
    logs = "\n".join(r.getMessage() for r in caplog.records)
    assert "Invalid destination" in logs
    assert PHONE.lstrip("+") not in logs
    assert termii.last_code() not in logs
