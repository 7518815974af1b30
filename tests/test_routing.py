"""Routes per country, failover on definite failures only, and a circuit breaker shared in Redis."""

from __future__ import annotations

import pytest

from otpsvc.config import load_settings
from otpsvc.errors import ConfigError
from tests.conftest import KEY_A, Api, FakeClock
from tests.fakes.alphasms import FakeAlphasms
from tests.fakes.cequens import FakeCequens
from tests.fakes.sevenio import FakeSevenio
from tests.fakes.termii import FakeTermii
from tests.test_scripts import code_ssml

CONFIG = {
    "OTPSVC_REDIS_URL": "redis://127.0.0.1:1/0",
    "OTPSVC_SECRET_KEY": "Vq3-nX8_tR2pL7zK4yB9mW6cH1dF5gJ0sA",
    "OTPSVC_API_KEYS": "web:kP4_vN8xQ2rT6yW1zM3bC7dF",
    "OTPSVC_PROVIDERS": "sevenio",
    "OTPSVC_SEVENIO_API_KEY": "seven-key-123",
}
ROUTES = "234=termii,sevenio;380=alphasms,sevenio;20,966,971=cequens"
NG, UA, EG, DE = "+2348031234567", "+380501234567", "+201001234567", "+4915123456789"


def routed(make_app, openapi, **extra: str) -> Api:
    env = {"OTPSVC_PROVIDERS": "sevenio", "OTPSVC_ROUTES": ROUTES, **extra}
    return Api(make_app(**env), KEY_A, openapi)


def test_each_country_takes_its_first_provider(
    make_app, openapi, termii: FakeTermii, sevenio: FakeSevenio, alphasms: FakeAlphasms,
    cequens: FakeCequens,
):  # fmt: skip
    """NG -> termii, UA -> alphasms, EG -> cequens, anything else -> the default (sevenio)."""
    api = routed(make_app, openapi)
    taken = {phone: api.start(phone).get_json()["provider"] for phone in (NG, UA, EG, DE)}
    assert taken == {NG: "termii", UA: "alphasms", EG: "cequens", DE: "sevenio"}
    assert (len(termii.calls), len(alphasms.calls), len(cequens.calls), len(sevenio.calls)) == (
        1, 1, 1, 1,
    )  # fmt: skip


def test_definite_failure_moves_to_the_next_provider(
    make_app, openapi, termii: FakeTermii, sevenio: FakeSevenio
):
    """Termii answers 500: seven.io takes the call; the answer and GET name seven.io."""
    api = routed(make_app, openapi)
    termii.mode = "server_error"
    data = api.start(NG).get_json()
    assert data["provider"] == "sevenio"
    assert api.get(data["id"]).get_json()["provider"] == "sevenio"
    assert len(termii.calls) == 1
    assert len(sevenio.calls) == 1


def test_failover_reads_the_same_code(make_app, openapi, termii: FakeTermii, sevenio: FakeSevenio):
    """The code Termii was sent is the one seven.io reads, and it approves."""
    api = routed(make_app, openapi)
    termii.mode = "rate_limited"
    vid = api.start(NG).get_json()["id"]
    sent_to_termii = termii.last_code()
    expected = code_ssml(sent_to_termii, "en", brand="otpsvc", voice="en-US-female")
    assert sevenio.calls[-1].form["text"] == expected
    assert api.check(vid, sent_to_termii).get_json()["valid"] is True


def test_all_providers_failing_is_502(make_app, openapi, termii: FakeTermii, sevenio: FakeSevenio):
    """When every provider of the route fails definitely the start is 502, after trying each."""
    api = routed(make_app, openapi)
    termii.mode = "server_error"
    sevenio.mode = "900"
    assert api.start(NG).status_code == 502
    assert (len(termii.calls), len(sevenio.calls)) == (1, 1)


def test_ambiguous_timeout_does_not_fail_over(
    make_app, openapi, termii: FakeTermii, sevenio: FakeSevenio
):
    """Termii hangs past the read timeout: no second provider is called (no double call)."""
    api = routed(make_app, openapi, OTPSVC_PROVIDER_READ_TIMEOUT="0.3")
    termii.hang = True
    data = api.start(NG).get_json()
    assert data["provider"] == "termii"
    assert data["delivery"]["status"] == "unknown"
    assert sevenio.calls == []


def test_breaker_opens_after_repeated_failures_for_every_worker(
    make_app, openapi, termii: FakeTermii, sevenio: FakeSevenio, clock: FakeClock
):
    """Two failures open Termii's circuit: both app instances skip it until the cool-off ends."""
    env = {"OTPSVC_BREAKER_THRESHOLD": "2", "OTPSVC_BREAKER_COOLOFF": "30"}
    first, second = routed(make_app, openapi, **env), routed(make_app, openapi, **env)
    termii.mode = "server_error"
    first.start("+2348031234501")
    first.start("+2348031234502")
    assert len(termii.calls) == 2
    termii.mode = "ok"
    assert second.start("+2348031234503").get_json()["provider"] == "sevenio"
    assert first.start("+2348031234504").get_json()["provider"] == "sevenio"
    assert len(termii.calls) == 2
    clock.advance(31)
    assert second.start("+2348031234505").get_json()["provider"] == "termii"


def test_failed_trial_after_cooloff_reopens_at_once(
    make_app, openapi, termii: FakeTermii, sevenio: FakeSevenio, clock: FakeClock
):
    """After the cool-off one failure is enough to open the circuit again."""
    api = routed(make_app, openapi, OTPSVC_BREAKER_THRESHOLD="2")
    termii.mode = "server_error"
    api.start("+2348031234501")
    api.start("+2348031234502")
    clock.advance(31)
    api.start("+2348031234503")  # the trial: fails, seven.io takes it
    assert len(termii.calls) == 3
    api.start("+2348031234504")
    assert len(termii.calls) == 3


def test_every_circuit_open_is_a_fast_502(
    make_app, openapi, termii: FakeTermii, sevenio: FakeSevenio
):
    """With every provider of the route cooling off, the start fails at once without a request."""
    api = routed(make_app, openapi, OTPSVC_BREAKER_THRESHOLD="1")
    termii.mode = "server_error"
    sevenio.mode = "600"
    api.start("+2348031234501")
    before = len(termii.requests) + len(sevenio.requests)
    assert api.start("+2348031234502").status_code == 502
    assert len(termii.requests) + len(sevenio.requests) == before


@pytest.mark.parametrize("routes", ["234=nosuch", "abc=sevenio", "234", "234=sevenio;234=sevenio"])
def test_bad_routes_stop_start_up(routes: str):
    """A route naming an unknown provider, a bad calling code or a code twice is refused."""
    with pytest.raises(ConfigError, match="OTPSVC_ROUTES"):
        load_settings({**CONFIG, "OTPSVC_ROUTES": routes})


def test_routed_provider_needs_its_settings():
    """A provider named only in a route must still be configured, public URL included."""
    with pytest.raises(ConfigError) as info:
        load_settings({**CONFIG, "OTPSVC_ROUTES": "20=cequens"})
    assert "OTPSVC_CEQUENS_USERNAME" in str(info.value)
    assert "OTPSVC_PUBLIC_URL" in str(info.value)


def test_the_breaker_metric_is_the_shared_state_at_scrape_time(
    make_app, openapi, termii: FakeTermii, sevenio: FakeSevenio, clock: FakeClock
):
    """otpsvc_provider_breaker_open is read from Redis when scraped: a worker that placed no
    call reports the circuit another opened, and every worker reports it closed once the
    cool-off ended (a per-worker gauge stayed 1 for minutes and fired its alert on a closed
    breaker)."""
    env = {"OTPSVC_BREAKER_THRESHOLD": "2", "OTPSVC_BREAKER_COOLOFF": "30"}
    first, second = routed(make_app, openapi, **env), routed(make_app, openapi, **env)
    for api in (first, second):
        api.app.extensions["otpsvc"].dispatcher.breaker.cache_seconds = 0.0

    def scraped(api: Api) -> str:
        text = Api(api.app, None, openapi).request("GET", "/metrics").get_data(as_text=True)
        return next(
            line for line in text.splitlines()
            if line.startswith('otpsvc_provider_breaker_open{provider="termii"}')
        )  # fmt: skip

    assert scraped(second).endswith(" 0.0")
    termii.mode = "server_error"
    first.start("+2348031234501")
    first.start("+2348031234502")
    assert scraped(second).endswith(" 1.0")
    assert scraped(first).endswith(" 1.0")
    clock.advance(31)
    assert scraped(first).endswith(" 0.0")
    assert scraped(second).endswith(" 0.0")
