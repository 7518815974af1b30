"""Redis round trips per request: requests Redis read (a pipeline is one), and the commands in them
(MONITOR; commands run inside Lua excluded)."""

from __future__ import annotations

import time

import pytest

from otpsvc.dev.monitor import commands_sent, round_trips
from tests.conftest import Api, wrong_code
from tests.fakes.termii import FakeTermii


@pytest.fixture(autouse=True)
def breaker_state_cached(api: Api) -> None:
    """A worker reads the breaker state, and looks at the kill switch and the data's epoch, at
    most once a second; on a slow machine that read could land inside a measured request. Kept
    for the test, so every count is the request's own."""
    runtime = api.app.extensions["otpsvc"]
    runtime.dispatcher.breaker.cache_seconds = 3600.0
    runtime.service.velocity.guard_seconds = 3600.0


def test_start_takes_three_round_trips(api: Api, termii: FakeTermii, redis_url):
    """A start takes 3 round trips on one Redis: the request limits chained with the call
    limits in one script, with the open-verification read pipelined beside it; reserve;
    finalize."""
    api.start("+2348031234500")  # loads the scripts and opens the connection
    assert round_trips(redis_url, lambda: api.start("+2348031234501")) == 3
    commands = commands_sent(redis_url, lambda: api.start("+2348031234502"))
    assert commands == ["EVALSHA", "GET", "EVALSHA", "EVALSHA"], commands


def test_resend_takes_three_round_trips(api: Api, termii: FakeTermii, redis_url, clock):
    """A resend costs the same as a first start."""
    api.start()
    clock.advance(31)
    assert round_trips(redis_url, api.start) == 3


def test_check_takes_two_round_trips(api: Api, termii: FakeTermii, redis_url):
    """A right check takes 2 round trips on one Redis: the request limits chained with the
    attempt in one script, then the approval; a wrong one too (the failure count second)."""
    warm = api.start("+2348031234500").get_json()["id"]
    api.check(warm, termii.last_code())  # Redis loads each script once, on its first use
    vid = api.start().get_json()["id"]
    code = termii.last_code()
    api.check(vid, wrong_code(code))
    wrong = round_trips(redis_url, lambda: api.check(vid, wrong_code(code)))
    right = round_trips(redis_url, lambda: api.check(vid, code))
    assert wrong == 2
    assert right == 2
    again = api.start("+2348031234503").get_json()["id"]
    code = termii.last_code()
    assert commands_sent(redis_url, lambda: api.check(again, code)) == ["EVALSHA", "EVALSHA"]


def test_a_provider_never_read_is_read_whatever_the_host_uptime(api: Api):
    """A breaker cache longer than the monotonic clock's reading (a host booted less than the
    cache time ago) still reads a provider it never read, instead of failing with a KeyError."""
    breaker = api.app.extensions["otpsvc"].dispatcher.breaker
    breaker.cache_seconds = time.monotonic() + 3600.0
    assert breaker.open_until(["termii"]) == {"termii": 0}
