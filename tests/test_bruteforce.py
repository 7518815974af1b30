"""10,000 guesses from rotating addresses against one number, under the default limits."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from otpsvc.config import Settings
from tests.conftest import KEY_A, PHONE


def test_ten_thousand_guesses_get_nothing(make_app, openapi, termii, clock):
    """An hour of guesses from 10,000 addresses: no approval, at most 5 calls, few guesses tried."""
    defaults = Settings.__dataclass_fields__
    app = make_app(
        # The shipped limits, not the test suite's generous ones.
        OTPSVC_RATE_LIMIT_START_IP=defaults["rate_limit_start_ip"].default,
        OTPSVC_RATE_LIMIT_CHECK_IP=defaults["rate_limit_check_ip"].default,
        OTPSVC_VELOCITY_PHONE=defaults["velocity_phone"].default,
        OTPSVC_VELOCITY_IP=defaults["velocity_ip"].default,
        OTPSVC_VELOCITY_PREFIX=defaults["velocity_prefix"].default,
        OTPSVC_ARGON2_MEMORY_KIB="1024",  # speed only; the limits are what is under test
    )
    # A plain client: 10,000 contract checks would only slow this down (other tests do them).
    client = app.test_client()
    auth = {"Authorization": f"Bearer {KEY_A}"}
    rng = random.Random(20261123)
    ids: list[str] = []
    outcomes: Counter[str] = Counter()
    evaluated = 0
    for i in range(10_000):
        clock.advance(0.36)  # 10,000 requests spread over one hour
        environ = {"REMOTE_ADDR": f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"}
        if i % 20 == 0 or not ids:
            response = client.post(
                "/otp/start", json={"phone": PHONE}, headers=auth, environ_base=environ
            )
            if response.status_code in (200, 201):
                ids.append(response.get_json()["id"])
            outcomes[f"start {response.status_code}"] += 1
            continue
        guess = f"{rng.randrange(10**6):06d}"
        target = rng.choice(ids)
        response = client.post(
            "/otp/check", json={"id": target, "code": guess}, headers=auth, environ_base=environ
        )
        outcomes[f"check {response.status_code}"] += 1
        if response.status_code == 200:
            evaluated += 1
            assert response.get_json()["valid"] is False
    calls = len(termii.calls)
    assert calls <= 5
    assert evaluated <= 15
    pytest.FIGURES["brute force, 10,000 requests in 1 h"] = (  # type: ignore[attr-defined]
        f"0 approvals, {calls} calls placed, {evaluated} guesses compared; {dict(outcomes)}"
    )
