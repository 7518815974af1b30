"""Redis round trips per request, counted by MONITOR (commands run inside Lua excluded)."""

from __future__ import annotations

from otpsvc.dev.monitor import commands_sent
from tests.conftest import Api, wrong_code
from tests.fakes.termii import FakeTermii


def test_start_takes_at_most_four_round_trips(api: Api, termii: FakeTermii, redis_url):
    """A start (rate limits included) sends at most 4 commands to Redis."""
    api.start("+2348031234500")  # loads the scripts and opens the connection
    commands = commands_sent(redis_url, lambda: api.start("+2348031234501"))
    assert len(commands) <= 4, commands


def test_resend_takes_at_most_four_round_trips(api: Api, termii: FakeTermii, redis_url, clock):
    """A resend costs the same as a first start."""
    api.start()
    clock.advance(31)
    commands = commands_sent(redis_url, api.start)
    assert len(commands) <= 4, commands


def test_check_takes_at_most_three_round_trips(api: Api, termii: FakeTermii, redis_url):
    """A right check (limit, attempt, approval) sends at most 3 commands; a wrong one 2."""
    warm = api.start("+2348031234500").get_json()["id"]
    api.check(warm, termii.last_code())  # Redis loads each script once, on its first use
    vid = api.start().get_json()["id"]
    code = termii.last_code()
    api.check(vid, wrong_code(code))
    wrong = commands_sent(redis_url, lambda: api.check(vid, wrong_code(code)))
    right = commands_sent(redis_url, lambda: api.check(vid, code))
    assert len(wrong) <= 2, wrong
    assert len(right) <= 3, right
