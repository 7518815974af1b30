"""Fixes from the adversarial review (issue 12): each test failed before its fix."""

from __future__ import annotations

import time

import pytest
import redis

from otpsvc import create_app
from otpsvc.config import load_settings
from otpsvc.errors import ConfigError
from otpsvc.store.clock import RedisClock
from tests.conftest import CEQUENS_ONLY, KEY_A, KEY_B, PUBLIC_URL, Api, termii_env, wrong_code
from tests.fakes.sevenio import FakeSevenio
from tests.fakes.termii import FakeTermii

ROUTES = "234=termii,sevenio"
NG = "+2348031234567"


def de_number(i: int) -> str:
    return f"+49151{i:08d}"


# 1. Recipient errors do not open a provider's circuit ------------------------------------------


def test_recipient_errors_do_not_open_the_breaker(make_app, openapi, sevenio: FakeSevenio):
    """Five starts to numbers seven.io refuses ("202 invalid recipient") leave its circuit
    closed: the next person's call goes through."""
    api = Api(make_app(OTPSVC_PROVIDERS="sevenio"), KEY_A, openapi)
    sevenio.mode = "202"
    assert [api.start(de_number(i)).status_code for i in range(6)] == [502] * 6
    sevenio.mode = "ok"
    response = api.start(de_number(99))
    assert response.status_code == 201
    assert response.get_json()["provider"] == "sevenio"


def test_provider_health_failures_still_open_the_breaker(make_app, openapi, sevenio: FakeSevenio):
    """Five 500s open it: the sixth start is refused without a request to seven.io."""
    api = Api(make_app(OTPSVC_PROVIDERS="sevenio"), KEY_A, openapi)
    sevenio.mode = "http500"
    for i in range(5):
        api.start(de_number(i))
    sent = len(sevenio.requests)
    sevenio.mode = "ok"
    assert api.start(de_number(99)).status_code == 502
    assert len(sevenio.requests) == sent


# 9. Gateway errors are ambiguous; every provider request counts against the budget -----------


def test_a_gateway_error_is_ambiguous_and_calls_no_second_provider(
    make_app, openapi, termii: FakeTermii, sevenio: FakeSevenio
):
    """Termii behind a gateway answers 502 or 504: the call may be queued, so seven.io is not
    asked to ring the same person; delivery is unknown and the code stays valid."""
    api = Api(make_app(OTPSVC_ROUTES=ROUTES, OTPSVC_PROVIDERS="sevenio"), KEY_A, openapi)
    for i, mode in enumerate(("bad_gateway", "gateway_timeout")):
        termii.mode = mode
        response = api.start(f"+23480312345{i:02d}")
        assert response.status_code == 201
        data = response.get_json()
        assert (data["provider"], data["delivery"]["status"]) == ("termii", "unknown")
        assert api.check(data["id"], termii.codes()[-1]).get_json()["valid"] is True
    assert not sevenio.calls


def failing_termii(make_app, openapi, termii: FakeTermii, *, budget: str) -> Api:
    """Nigeria routed to Termii, then seven.io; Termii answers 500; the given call budget."""
    termii.mode = "server_error"
    app = make_app(OTPSVC_ROUTES=ROUTES, OTPSVC_PROVIDERS="sevenio", OTPSVC_CALL_BUDGET=budget)
    return Api(app, KEY_A, openapi)


def test_every_provider_request_counts_against_the_call_budget(
    make_app, openapi, termii: FakeTermii, sevenio: FakeSevenio
):
    """Budget 2 an hour: a start that fails over spends both; the next start is refused."""
    api = failing_termii(make_app, openapi, termii, budget="2 per hour")
    assert api.start(NG).get_json()["provider"] == "sevenio"
    refused = api.start("+2348031234500")
    assert refused.status_code == 503
    assert refused.get_json()["code"] == "calls_suspended"
    assert (len(termii.calls), len(sevenio.calls)) == (1, 1)


def test_a_spent_budget_ends_the_failover(
    make_app, openapi, termii: FakeTermii, sevenio: FakeSevenio
):
    api = failing_termii(make_app, openapi, termii, budget="1 per hour")
    assert api.start(NG).status_code == 502
    assert not sevenio.calls


# 8. A Redis dump gives back no number prefix and no link from a counter to a verification ---


def test_velocity_counters_hold_no_prefix_and_no_verification_id(
    api: Api, termii: FakeTermii, redis_client: redis.Redis
):
    ids = [api.start(f"+23480312345{i:02d}").get_json()["id"] for i in range(3)]
    keys = redis_client.keys("*velocity*")
    assert keys
    assert not [k for k in keys if "803123" in k]
    members = {
        m for k in keys if redis_client.type(k) == "zset" for m in redis_client.zrange(k, 0, -1)
    }
    assert members
    assert not members & set(ids)


# 2. One tenant cannot lock a number out of every tenant -----------------------------------------


def test_wrong_codes_at_one_client_do_not_lock_the_number_for_another(
    make_app, openapi, termii: FakeTermii, clock
):
    """Client A's users spend A's daily cap for a number; client B's user still gets a call,
    and A's refusal says nothing about B."""
    app = make_app(OTPSVC_MAX_FAILED_CHECKS_PER_NUMBER="2")
    a, b = Api(app, KEY_A, openapi), Api(app, KEY_B, openapi)
    vid = a.start(NG).get_json()["id"]
    for _ in range(2):
        a.check(vid, wrong_code(termii.last_code()))
    clock.advance(31)
    refused = a.start(NG)
    assert refused.get_json()["code"] == "too_many_failed_checks"
    assert b.start(NG).status_code == 201


def test_many_wrong_codes_across_clients_slow_the_number_down(
    make_app, openapi, termii: FakeTermii, clock
):
    """Past the all-clients cap a number gets one call per slow-down period, whichever client
    asks, with a refusal that names no other client's state; then calls resume."""
    app = make_app(
        OTPSVC_MAX_FAILED_CHECKS_PER_NUMBER="5",
        OTPSVC_MAX_FAILED_CHECKS_ALL_CLIENTS="3",
        OTPSVC_FAILED_CHECKS_SLOWDOWN="600",
        OTPSVC_RESEND_COOLDOWN="0",
    )
    a, b = Api(app, KEY_A, openapi), Api(app, KEY_B, openapi)
    vid = a.start(NG).get_json()["id"]
    for _ in range(3):
        a.check(vid, wrong_code(termii.last_code()))
    assert b.start(NG).status_code == 201  # the first call of the period
    slowed = b.start(NG)
    assert slowed.status_code == 429
    problem = slowed.get_json()
    assert problem["code"] == "rate_limited"
    assert "wrong" not in problem["detail"]
    assert "verification_id" not in problem
    assert 590 <= problem["retry_after"] <= 600
    clock.advance(601)
    resumed = b.start(NG)
    assert resumed.status_code == 201, resumed.get_json()


# 5. Cancel then start keeps the cooldown and the send cap --------------------------------------


def test_cancel_then_start_keeps_the_cooldown(api: Api, termii: FakeTermii, clock):
    """Six start-and-cancel pairs at one instant ring the phone once."""
    statuses = []
    for _ in range(6):
        response = api.start(NG)
        statuses.append(response.status_code)
        if response.status_code == 201:
            api.cancel(response.get_json()["id"])
    assert statuses == [201] + [429] * 5
    assert len(termii.calls) == 1
    clock.advance(31)
    again = api.start(NG)
    assert again.status_code == 201
    assert again.get_json()["sends"] == 2


def test_cancel_then_start_keeps_the_send_cap(make_app, openapi, termii: FakeTermii, clock):
    api = Api(make_app(OTPSVC_MAX_SENDS="2", OTPSVC_RESEND_COOLDOWN="0"), KEY_A, openapi)
    for _ in range(2):
        api.cancel(api.start(NG).get_json()["id"])
    refused = api.start(NG)
    assert refused.get_json()["code"] == "max_sends_reached"
    assert len(termii.calls) == 2
    clock.advance(301)  # the canceled verification has expired: a fresh start
    assert api.start(NG).status_code == 201


# 6. Dev mode is not one variable away from production ------------------------------------------


def test_dev_mode_with_a_real_provider_is_refused(redis_url: str):
    """OTPSVC_DEV_MODE=true beside termii would drop the allowlist and open the inbox."""
    env = termii_env(redis_url, OTPSVC_DEV_MODE="true", OTPSVC_PROVIDERS="console,termii")
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert "OTPSVC_DEV_MODE" in str(info.value)
    assert "termii" in str(info.value)


def test_the_dev_inbox_shows_each_client_only_its_own_calls(make_app, openapi):
    app = make_app(OTPSVC_PROVIDERS="console", OTPSVC_DEV_MODE="true")
    a, b = Api(app, KEY_A, openapi), Api(app, KEY_B, openapi)
    a.start(NG)
    a_calls = a.client.get("/dev/calls", headers={"Authorization": f"Bearer {KEY_A}"})
    b_calls = b.client.get("/dev/calls", headers={"Authorization": f"Bearer {KEY_B}"})
    assert len(a_calls.get_json()["calls"]) == 1
    assert b_calls.get_json()["calls"] == []


# 7. Hostile JSON --------------------------------------------------------------------------------


def test_deeply_nested_json_is_400_not_500(api: Api, caplog):
    for path in ("/otp/start", "/otp/check"):
        response = api.request(
            "POST", path, data="[" * 5000, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 400
        assert response.get_json()["code"] == "bad_request"
    assert "Traceback" not in caplog.text
    assert "unhandled" not in caplog.text


# 11. X-Forwarded-For only from the proxies' own networks ---------------------------------------


def proxied_start(api: Api, phone: str, *, peer: str, forwarded: str) -> int:
    return api.request(
        "POST",
        "/otp/start",
        json={"phone": phone},
        headers={"X-Forwarded-For": forwarded},
        environ_base={"REMOTE_ADDR": peer},
    ).status_code


def behind_one_proxy(make_app, openapi) -> Api:  # type: ignore[no-untyped-def]
    """One trusted hop from 10.0.0.0/8; one start a minute per client address."""
    app = make_app(
        OTPSVC_RATE_LIMIT_START_IP="1 per minute",
        OTPSVC_TRUSTED_PROXIES="1",
        OTPSVC_TRUSTED_PROXY_NETWORKS="10.0.0.0/8",
    )
    return Api(app, KEY_A, openapi)


def test_forwarded_for_counts_only_from_a_trusted_proxy_network(make_app, openapi, termii):
    """With one trusted hop, a client reaching the port directly cannot pick its own address;
    the proxy's header is believed."""
    api = behind_one_proxy(make_app, openapi)
    direct = [
        proxied_start(api, f"+23480312345{i:02d}", peer="198.51.100.9", forwarded=f"192.0.2.{i}")
        for i in range(2)
    ]
    assert direct == [201, 429]
    via_proxy = [
        proxied_start(api, f"+23480312346{i:02d}", peer="10.1.2.3", forwarded=f"192.0.2.{i}")
        for i in range(2)
    ]
    assert via_proxy == [201, 201]


def test_a_spoofed_entry_before_the_proxy_is_not_believed(make_app, openapi, termii):
    """The client sends 'X-Forwarded-For: <fake>'; the proxy appends the real address: with one
    hop, only the proxy's entry counts."""
    api = behind_one_proxy(make_app, openapi)
    statuses = [
        proxied_start(
            api, f"+23480312345{i:02d}", peer="10.1.2.3", forwarded=f"203.0.113.{i}, 192.0.2.7"
        )
        for i in range(2)
    ]
    assert statuses == [201, 429]


def test_trusted_proxies_without_networks_is_a_configuration_error(redis_url: str):
    env = termii_env(redis_url, OTPSVC_TRUSTED_PROXIES="1")
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert "OTPSVC_TRUSTED_PROXY_NETWORKS" in str(info.value)


# 12. Smaller points ----------------------------------------------------------------------------


def test_a_trailing_newline_is_not_a_valid_code_or_number(api: Api, termii: FakeTermii):
    """``$`` matched before a final newline: "123456\\n" passed and cost an attempt."""
    vid = api.start(NG).get_json()["id"]
    response = api.check(vid, termii.last_code() + "\n")
    assert response.status_code == 422
    assert "code" in response.get_json()["errors"]
    assert api.get(vid).get_json()["attempts_remaining"] == 5
    assert api.start(NG + "\n").status_code == 422


def test_superscript_digits_in_a_signed_timestamp_are_401_not_500(make_app, openapi):
    """A correctly signed seven.io hook whose timestamp is "²": refused, not a crash."""
    from tests.test_webhooks import signed_sevenio

    app = make_app(OTPSVC_PROVIDERS="sevenio")
    headers, body = signed_sevenio({"webhook_event": "voice_status", "data": {}}, "\u00b2")  # type: ignore[arg-type]
    response = Api(app, None, openapi).request(
        "POST", "/webhooks/sevenio", data=body, headers=headers, content_type="application/json"
    )
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("url", "accepted"),
    [
        ("http://api.ng.termii.com", False),
        ("http://10.0.0.5:8080", False),
        ("https://api.ng.termii.com", True),
        ("http://127.0.0.1:9000", True),
        ("http://localhost:9000", True),
        ("http://[::1]:9000", True),
    ],
)
def test_provider_base_urls_must_be_https_off_this_machine(redis_url: str, url, accepted):
    env = termii_env(redis_url, OTPSVC_TERMII_BASE_URL=url)
    if accepted:
        assert load_settings(env).provider_settings["termii"].base_url == url
    else:
        with pytest.raises(ConfigError) as info:
            load_settings(env)
        assert "OTPSVC_TERMII_BASE_URL" in str(info.value)


def test_every_worker_counts_time_by_the_redis_server_clock(redis_client: redis.Redis):
    """A worker whose clock runs an hour behind still reads Redis's time, so it cannot let old
    calls slip out of a window early."""
    behind = RedisClock(redis_client, local=lambda: time.time() - 3600)
    seconds, micros = redis_client.time()
    assert abs(behind() - (seconds + micros / 1e6)) < 0.5


def test_the_app_uses_the_redis_clock_by_default(redis_url: str):
    env = termii_env(redis_url)
    app = create_app(env)
    try:
        assert isinstance(app.extensions["otpsvc"].service.clock, RedisClock)
    finally:
        app.extensions["otpsvc"].dispatcher.close()
        app.extensions["otpsvc"].redis.close()


# 4. CEQUENS callback tokens: one per endpoint and per send, a key press once ------------------


EG = "+201001234567"


def cequens_urls(cequens) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    body = cequens.calls[-1].json
    return (
        body["statusCallbackEndpoint"].removeprefix(PUBLIC_URL),
        body.get("dtmfCallbackEndpoint", "").removeprefix(PUBLIC_URL),
    )


def test_a_status_token_does_not_open_the_dtmf_endpoint(make_app, openapi, cequens):
    app = make_app(**CEQUENS_ONLY)
    api, hooks = Api(app, KEY_A, openapi), Api(app, None, openapi)
    vid = api.start(EG, mode="keypress").get_json()["id"]
    status_url, dtmf_url = cequens_urls(cequens)
    assert status_url.split("/")[3] != dtmf_url.split("/")[3]
    borrowed = status_url.removesuffix("/status") + "/dtmf?dtmf=1"
    assert hooks.request("GET", borrowed).status_code == 401
    assert api.get(vid).get_json()["status"] == "pending"


def test_callbacks_of_an_older_send_change_nothing(make_app, openapi, cequens, clock):
    """After a resend, the first send's URLs (from a log, say) neither approve nor lift the
    cooldown."""
    app = make_app(**CEQUENS_ONLY)
    api, hooks = Api(app, KEY_A, openapi), Api(app, None, openapi)
    vid = api.start(EG, mode="keypress").get_json()["id"]
    old_status, old_dtmf = cequens_urls(cequens)
    clock.advance(31)
    resent = api.start(EG, mode="keypress").get_json()
    assert resent["sends"] == 2
    assert hooks.request("GET", old_dtmf + "?dtmf=1").get_json()["result"] == "ignored"
    assert hooks.request("POST", old_status, json={"status": "failed"}).get_json()["result"] == (
        "ignored"
    )
    view = api.get(vid).get_json()
    assert view["status"] == "pending"
    assert view["resend_available_at"] == resent["resend_available_at"]
    _, new_dtmf = cequens_urls(cequens)
    assert hooks.request("GET", new_dtmf + "?dtmf=1").get_json()["result"] == "approved"


def test_one_key_press_per_send(make_app, openapi, cequens):
    """The first 1 or 9 reported for a send is the answer: a later '9' on the same send (a
    replay, or a second report) does not deny. A key other than 1 or 9 (a slip of the finger)
    is ignored and does not use up the send's answer: the person can still press 1."""
    app = make_app(**CEQUENS_ONLY)
    api, hooks = Api(app, KEY_A, openapi), Api(app, None, openapi)
    vid = api.start(EG, mode="keypress").get_json()["id"]
    _, dtmf = cequens_urls(cequens)
    assert hooks.request("GET", dtmf + "?dtmf=5").get_json()["result"] == "ignored"
    assert api.get(vid).get_json()["status"] == "pending"
    assert hooks.request("GET", dtmf + "?dtmf=1").get_json()["result"] == "approved"
    assert hooks.request("GET", dtmf + "?dtmf=9").get_json()["result"] == "ignored"
    assert api.get(vid).get_json()["status"] == "approved"
