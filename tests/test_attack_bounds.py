"""The most calls an attacker can cause in an hour under the shipped defaults, measured."""

from __future__ import annotations

import pytest

from otpsvc.config import Settings
from tests.conftest import KEY_A

DEFAULTS = {
    "OTPSVC_RATE_LIMIT_START_IP": Settings.rate_limit_start_ip,
    "OTPSVC_VELOCITY_PHONE": Settings.velocity_phone,
    "OTPSVC_VELOCITY_IP": Settings.velocity_ip,
    "OTPSVC_VELOCITY_PREFIX": Settings.velocity_prefix,
    "OTPSVC_RATE_LIMIT_CHECK_IP": Settings.rate_limit_check_ip,
}


def hammer(make_app, clock, phones, ips, *, step: float, seconds: int = 3600) -> int:
    """Ask for calls for an hour, cycling through numbers and addresses; the starts that called."""
    client = make_app(**DEFAULTS).test_client()
    placed = 0
    for i in range(int(seconds / step)):
        clock.advance(step)
        response = client.post(
            "/otp/start",
            json={"phone": phones[i % len(phones)]},
            headers={"Authorization": f"Bearer {KEY_A}"},
            environ_base={"REMOTE_ADDR": ips[i % len(ips)]},
        )
        placed += response.status_code in (200, 201)
    return placed


def test_one_number_gets_at_most_five_calls_an_hour(make_app, clock, termii):
    """From 720 addresses, waiting out every cooldown: 5 calls to one number in the hour."""
    ips = [f"10.0.{i // 256}.{i % 256}" for i in range(720)]
    placed = hammer(make_app, clock, ["+2348031234567"], ips, step=5)
    assert placed == len(termii.calls) == 5
    pytest.FIGURES["most calls per number per hour"] = f"{placed} (720 addresses, 720 requests)"  # type: ignore[attr-defined]


def test_one_address_causes_at_most_ten_calls_an_hour(make_app, clock, termii):
    """One address asking for 240 different numbers over an hour: 10 calls."""
    phones = [f"+234803{1000000 + i:07d}" for i in range(240)]
    placed = hammer(make_app, clock, phones, ["198.51.100.7"], step=15)
    assert placed == len(termii.calls) == 10
    pytest.FIGURES["most calls per client IP per hour"] = f"{placed} (240 numbers, 1 address)"  # type: ignore[attr-defined]


def test_one_prefix_gets_at_most_twenty_calls_an_hour(make_app, clock, termii):
    """Numbers sharing +234 803123 from rotating addresses: 20 calls in the hour."""
    phones = [f"+234803123{i:04d}" for i in range(360)]
    ips = [f"10.1.{i // 256}.{i % 256}" for i in range(360)]
    placed = hammer(make_app, clock, phones, ips, step=10)
    assert placed == len(termii.calls) == 20
    pytest.FIGURES["most calls per number prefix per hour"] = (
        f"{placed} (360 numbers, 360 addresses)"  # type: ignore[attr-defined]
    )


def hammer_as_backend(make_app, clock, phone_of, *, step: float, seconds: int = 3600) -> int:
    """One backend address asking for calls for an hour, naming a new person (a fresh
    ``end_user.ip`` and ``user_id``) and a new number every time; the starts that called."""
    client = make_app(**DEFAULTS).test_client()
    placed = 0
    for i in range(int(seconds / step)):
        clock.advance(step)
        ip = f"10.{i // 65536}.{i // 256 % 256}.{i % 256}" if i % 2 else f"2001:db8:{i:x}::1"
        response = client.post(
            "/otp/start",
            json={"phone": phone_of(i), "end_user": {"ip": ip, "user_id": f"u{i}"}},
            headers={"Authorization": f"Bearer {KEY_A}"},
            environ_base={"REMOTE_ADDR": "203.0.113.10"},
        )
        placed += response.status_code in (200, 201)
    return placed


def test_rotating_end_user_in_one_country_is_bounded_by_the_country_limit(make_app, clock, termii):
    """A client lying about its people (new IP and account every time), 1,200 numbers over 100
    prefixes of one country: 500 calls in the hour (OTPSVC_VELOCITY_COUNTRY)."""
    placed = hammer_as_backend(make_app, clock, lambda i: f"+234803{i % 100:03d}{i:04d}", step=3)
    assert placed == len(termii.calls) == 500
    pytest.FIGURES["most calls per hour, end_user rotating, one country"] = (  # type: ignore[attr-defined]
        f"{placed} (1,200 numbers over 100 prefixes, 1,200 end-user IPs and ids)"
    )


def test_rotating_end_user_across_countries_is_bounded_by_the_client_limit(make_app, clock, termii):
    """The same across three countries: 1,000 calls in the hour (OTPSVC_VELOCITY_CLIENT)."""
    countries = [
        lambda i: f"+234803{i % 100:03d}{i:04d}",
        lambda i: f"+3361{i % 100:02d}{i:05d}",
        lambda i: f"+49151{i % 100:02d}{i:06d}",
    ]
    placed = hammer_as_backend(make_app, clock, lambda i: countries[i % 3](i // 3), step=1.5)
    assert placed == len(termii.calls) == 1000
    pytest.FIGURES["most calls per hour, end_user rotating, three countries"] = (  # type: ignore[attr-defined]
        f"{placed} (2,400 numbers, 2,400 end-user IPs and ids)"
    )
