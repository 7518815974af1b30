"""No client can hurt another: the adversarial review's reproductions, two clients on one service.

``client-a`` plays the hostile client (or a leaked key), ``client-b`` the victim. Each test sends
the attacker's traffic first, then the victim's request, and asserts the victim is served: a
limit one client's traffic can fill is counted per client, and only a global ceiling sized above
any one client's share (which says so when it refuses) is shared.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otpsvc.config import Argon2Params
from otpsvc.core.keyring import Keyring
from tests.conftest import KEY_A, KEY_B, PHONE, PUBLIC_URL, SECRET, Api, FakeClock
from tests.fakes.cequens import FakeCequens
from tests.fakes.sevenio import FakeSevenio
from tests.fakes.termii import FakeTermii
from tests.test_hardening import CEQUENS_ONLY, EG, cequens_urls
from tests.test_webhooks import DE, Seven

KEY_C = "client-c-key-0123456789abcdef"
THREE_CLIENTS = f"client-a:{KEY_A},client-b:{KEY_B},client-c:{KEY_C}"
#: A country no test app calls.
JAPAN = "+819012345678"
NEW_SECRET = "a-new-secret-key-after-the-leak-0123456789abcdef"


def refusal(response) -> tuple[int, str, str | None, str | None]:  # type: ignore[no-untyped-def]
    body = response.get_json()
    return response.status_code, body.get("code"), body.get("limit"), body.get("scope")


def nigerian(i: int, prefix: str = "803") -> str:
    return f"+234{prefix}{i:07d}"


@pytest.fixture
def pair(make_app, openapi):  # type: ignore[no-untyped-def]
    """An app with small limits, and the two clients' API handles on it."""

    def build(**overrides: str) -> tuple[Api, Api]:
        app = make_app(**overrides)
        return Api(app, KEY_A, openapi), Api(app, KEY_B, openapi)

    return build


@pytest.mark.parametrize(
    ("setting", "prefixes", "limit"),
    [
        # New prefixes each time: only the country is shared.
        ("OTPSVC_VELOCITY_COUNTRY", ["803", "806", "813", "816", "703"], "velocity_country"),
        # One prefix, new numbers.
        ("OTPSVC_VELOCITY_PREFIX", ["803"] * 5, "velocity_prefix"),
    ],
)
def test_one_clients_calls_to_a_country_or_prefix_leave_the_others_share(
    pair, termii: FakeTermii, setting: str, prefixes: list[str], limit: str
):
    """The attacker fills its share of a country's (a prefix's) calls with new numbers and new
    end-user addresses; its next call is refused by its own share, and the victim's call to a
    number there is placed."""
    attacker, victim = pair(**{setting: "3 per hour"})
    for i, prefix in enumerate(prefixes[:3]):
        assert (
            attacker.start(nigerian(i, prefix), end_user={"ip": f"198.51.100.{i}"}).status_code
            == 201
        )
    over = attacker.start(nigerian(9, prefixes[3]), end_user={"ip": "198.51.100.99"})
    assert refusal(over) == (429, "rate_limited", limit, "client")
    assert "from this client" in over.get_json()["detail"]
    served = victim.start(nigerian(8, prefixes[4]), end_user={"ip": "203.0.113.5"})
    assert served.status_code == 201
    assert len(termii.calls) == 4


def test_resends_of_one_number_by_one_client_leave_the_others_calls(
    pair, termii: FakeTermii, clock: FakeClock
):
    """Five resends of one number by the attacker used to block that number for every client
    for the rest of the hour; now they spend the attacker's share alone."""
    attacker, victim = pair(OTPSVC_VELOCITY_PHONE="3 per hour", OTPSVC_RESEND_COOLDOWN="0")
    for _ in range(3):
        assert attacker.start(PHONE).status_code in (200, 201)
    assert refusal(attacker.start(PHONE)) == (429, "rate_limited", "velocity_phone", "client")
    assert victim.start(PHONE).status_code == 201
    assert len(termii.calls) == 4


def test_the_global_ceiling_still_holds_and_says_so(pair, termii: FakeTermii):
    """The number's ceiling for every client together stays the toll-fraud backstop: once the
    clients' calls together reach it, a refusal names the global ceiling, not the share."""
    attacker, victim = pair(
        OTPSVC_VELOCITY_PHONE="2 per hour",
        OTPSVC_VELOCITY_PHONE_ALL="3 per hour",
        OTPSVC_RESEND_COOLDOWN="0",
    )
    assert [attacker.start(PHONE).status_code for _ in range(2)] == [201, 200]
    assert victim.start(PHONE).status_code == 201
    refused = victim.start(PHONE)
    assert refusal(refused) == (429, "rate_limited", "velocity_phone_all", "global")
    assert "all clients together" in refused.get_json()["detail"]
    assert len(termii.calls) == 3


def test_checks_with_an_end_user_ip_do_not_lock_that_address_in_another_client(
    pair, termii: FakeTermii
):
    """The attacker sends checks with random ids naming the victim's end-user address; that
    fills the attacker's own limit for the address, and the victim's user there checks the
    right code."""
    attacker, victim = pair(OTPSVC_RATE_LIMIT_CHECK_IP="3 per minute")
    address = {"ip": "198.51.100.7"}
    for i in range(3):
        body = {"id": f"{i:036x}", "code": "123456", "end_user": address}
        assert attacker.request("POST", "/otp/check", json=body).status_code == 404
    body = {"id": "f" * 36, "code": "123456", "end_user": address}
    over = attacker.request("POST", "/otp/check", json=body)
    assert refusal(over) == (429, "rate_limited", "rate_limit_check_ip", "client")

    vid = victim.start(PHONE, end_user=address).get_json()["id"]
    checked = victim.request(
        "POST", "/otp/check", json={"id": vid, "code": termii.last_code(), "end_user": address}
    )
    assert checked.status_code == 200
    assert checked.get_json()["valid"] is True


def test_refused_starts_from_one_client_do_not_lock_an_address_in_another(pair, termii: FakeTermii):
    """Starts the attacker knows will be refused (a country not served, no call placed) with
    another client's end-user address count only in the attacker's own limit."""
    attacker, victim = pair(OTPSVC_RATE_LIMIT_START_IP="3 per minute")
    address = {"ip": "2001:db8:7::1"}
    for _ in range(3):
        assert attacker.start(JAPAN, end_user=address).status_code == 403
    assert attacker.start(JAPAN, end_user=address).status_code == 429
    assert victim.start(PHONE, end_user=address).status_code == 201
    assert len(termii.calls) == 1


@pytest.fixture
def keypress_clients(make_app, openapi, clock: FakeClock) -> tuple[Seven, Seven, Api]:
    """A seven.io app with keypress and three clients; the first two with hook senders."""
    app = make_app(
        OTPSVC_PROVIDERS="sevenio", OTPSVC_SEVENIO_KEYPRESS="true", OTPSVC_API_KEYS=THREE_CLIENTS
    )
    return (
        Seven(Api(app, KEY_A, openapi), clock),
        Seven(Api(app, KEY_B, openapi), clock),
        Api(app, KEY_C, openapi),
    )


def deny(seven: Seven) -> None:
    data = seven.api.start(DE, mode="keypress").get_json()
    mid = data["delivery"]["provider_message_id"]
    assert seven.hook("voice_dtmf", {"id": mid, "dtmf_digit": "9"}).get_json()["result"] == "denied"


def test_a_denial_on_one_clients_call_blocks_that_client_only(
    keypress_clients, sevenio, clock: FakeClock
):
    """A "9" on the attacker's call ("press 9 if this was not you") blocks the number for the
    attacker at once, and not for the victim; denials through two clients block it for all."""
    attacker, victim, third = keypress_clients
    deny(attacker)
    assert refusal(attacker.api.start(DE)) == (429, "number_blocked", "deny_block", "client")
    assert victim.api.start(DE).status_code == 201

    clock.advance(31)  # the victim's resend cooldown
    deny(victim)
    refused = third.start(DE)
    assert refusal(refused) == (429, "number_blocked", "deny_block_all", "global")
    assert "several clients" in refused.get_json()["detail"]


def test_switching_mode_does_not_skip_the_resend_cooldown(keypress_clients, sevenio: FakeSevenio):
    """A start in the other mode (code, then keypress) for the same number is held to the open
    verification's cooldown: two calls to one number within a second are not possible."""
    client = keypress_clients[0].api
    assert client.start(DE).status_code == 201
    switched = client.start(DE, mode="keypress")
    assert refusal(switched)[:2] == (429, "resend_too_soon")
    assert len(sevenio.calls) == 1


def test_a_mode_switch_after_the_cooldown_keeps_the_send_count(
    keypress_clients, sevenio: FakeSevenio, clock: FakeClock
):
    """After the cooldown a keypress start replaces the open code verification: the old one is
    canceled (its code dead) and the new one counts on from its sends."""
    client = keypress_clients[0].api
    first = client.start(DE).get_json()
    clock.advance(31)
    second = client.start(DE, mode="keypress")
    assert second.status_code == 201
    assert second.get_json()["sends"] == 2
    assert client.get(first["id"]).get_json()["status"] == "canceled"


def test_a_fallback_secret_cannot_sign_callbacks_for_sends_made_after_the_rotation(
    make_app, openapi, cequens: FakeCequens
):
    """After a rotation (the old secret kept as a fallback, usually after a leak), a CEQUENS key
    press signed with only the old secret is ignored for a verification made under the new one;
    the send's own token still approves."""
    app = make_app(**CEQUENS_ONLY, OTPSVC_SECRET_KEY=NEW_SECRET, OTPSVC_SECRET_KEY_FALLBACKS=SECRET)
    api, hooks = Api(app, KEY_A, openapi), Api(app, None, openapi)
    vid = api.start(EG, mode="keypress").get_json()["id"]
    leaked = Keyring(SECRET.encode(), Argon2Params(memory_kib=64))
    forged = f"/webhooks/cequens/{leaked.callback_token(vid, 1, 'dtmf')}/dtmf?dtmf=1"
    assert hooks.request("GET", forged).get_json()["result"] == "ignored"
    assert api.get(vid).get_json()["status"] == "pending"
    _, dtmf = cequens_urls(cequens)
    assert hooks.request("GET", dtmf + "?dtmf=1").get_json()["result"] == "approved"


def test_a_send_made_before_the_rotation_keeps_its_callbacks(
    make_app, openapi, cequens: FakeCequens
):
    """A call placed under the old secret, answered after the rotation: its own token (made with
    the old secret) still works, as the fallback is there for."""
    before = make_app(**CEQUENS_ONLY)
    vid = Api(before, KEY_A, openapi).start(EG, mode="keypress").get_json()["id"]
    _, dtmf = cequens_urls(cequens)
    after = make_app(
        **CEQUENS_ONLY, OTPSVC_SECRET_KEY=NEW_SECRET, OTPSVC_SECRET_KEY_FALLBACKS=SECRET
    )
    hooks = Api(after, None, openapi)
    assert hooks.request("GET", dtmf + "?dtmf=1").get_json()["result"] == "approved"
    assert Api(after, KEY_A, openapi).get(vid).get_json()["status"] == "approved"


def test_a_sevenio_key_press_must_match_the_calls_provider_and_message_id(
    make_app, openapi, clock: FakeClock, cequens: FakeCequens
):
    """A signed seven.io ``voice_dtmf`` naming another verification (``foreign_id``) with a
    made-up message id does not approve a keypress verification whose call went through
    CEQUENS, nor one of seven.io's own with the wrong message id."""
    app = make_app(
        OTPSVC_PROVIDERS="cequens",
        OTPSVC_ROUTES="49=sevenio",
        OTPSVC_SEVENIO_KEYPRESS="true",
        OTPSVC_ALLOWED_COUNTRIES="EG,DE",
    )
    seven = Seven(Api(app, KEY_A, openapi), clock)
    through_cequens = seven.api.start(EG, mode="keypress").get_json()
    assert through_cequens["provider"] == "cequens"
    forged = {"id": "123456789", "foreign_id": through_cequens["id"], "dtmf_digit": "1"}
    assert seven.hook("voice_dtmf", forged).get_json()["result"] == "ignored"
    assert seven.api.get(through_cequens["id"]).get_json()["status"] == "pending"

    own = seven.api.start(DE, mode="keypress").get_json()
    wrong = {"id": "987654321", "foreign_id": own["id"], "dtmf_digit": "1"}
    assert seven.hook("voice_dtmf", wrong).get_json()["result"] == "ignored"
    right = {**wrong, "id": own["delivery"]["provider_message_id"]}
    assert seven.hook("voice_dtmf", right).get_json()["result"] == "approved"


def test_refusals_name_the_limit_and_nothing_of_another_client(pair, termii: FakeTermii):
    """A refusal by a client's share says which limit and that it was this client's; the body
    names no other client and no number."""
    attacker, _ = pair(OTPSVC_VELOCITY_PHONE="1 per hour", OTPSVC_RESEND_COOLDOWN="0")
    attacker.start(PHONE)
    body = attacker.start(PHONE).get_json()
    text = str(body)
    assert body["limit"] == "velocity_phone"
    assert "client-b" not in text
    assert PHONE not in text
    assert PUBLIC_URL not in text


def test_readiness_reports_a_redis_that_refuses_writes(app, openapi, redis_client):
    """A Redis at maxmemory under noeviction answers reads and refuses every write: /readyz
    reports it (and ?deep=1 is 503, in the server's words) instead of 'ok' while every start
    and check fails."""
    probe = Api(app, None, openapi)
    assert probe.request("GET", "/readyz?deep=1").status_code == 200
    before = redis_client.config_get("maxmemory")["maxmemory"]
    policy = redis_client.config_get("maxmemory-policy")["maxmemory-policy"]
    redis_client.config_set("maxmemory-policy", "noeviction")
    redis_client.config_set("maxmemory", 1)
    try:
        reported = probe.request("GET", "/readyz").get_json()
        refused = probe.request("GET", "/readyz?deep=1")
    finally:
        redis_client.config_set("maxmemory", before)
        redis_client.config_set("maxmemory-policy", policy)
    assert refused.status_code == 503
    assert "refuses writes: command not allowed when used memory" in refused.get_json()["detail"]
    assert reported["redis"] == "unavailable"
    assert "refuses writes" in reported["warnings"][0]
    assert probe.request("GET", "/readyz?deep=1").get_json()["redis"] == "ok"


def test_wrong_metrics_tokens_are_limited_like_wrong_api_keys(make_app, openapi):
    """Guessing the metrics token counts against the address's failed authentications, as
    guessing an API key does: 429 past the limit; the right token is still served."""
    token = "Zq8_kM3vR1xK7pW4nB9yH2cJ"
    app = make_app(OTPSVC_METRICS_TOKEN=token, OTPSVC_RATE_LIMIT_AUTH_FAILURES="3 per minute")
    guesser = Api(app, "Wrong_token_0123456789xyz", openapi)
    statuses = [guesser.request("GET", "/metrics").status_code for _ in range(4)]
    assert statuses == [401, 401, 401, 429]
    assert Api(app, token, openapi).request("GET", "/metrics").status_code == 200


PEOPLE = ["+2348031230001", "+2348031230002", "+2348031230003"]
ADDRESSES = ["198.51.100.1", "198.51.100.2", "2001:db8:1::1"]
ACTION = st.one_of(
    st.tuples(st.just("start"), st.integers(0, 2), st.integers(0, 2), st.integers(0, 2)),
    st.tuples(st.just("check_unknown"), st.integers(0, 2)),
    st.tuples(st.just("check_wrong"), st.integers(0, 2)),
    st.tuples(st.just("bad_key"), st.integers(0, 2)),
)


def test_no_counter_one_client_fills_refuses_another(make_app, openapi, termii, redis_client):
    """Property over the limit table: for random traffic of one client (starts to a few numbers
    from a few end-user addresses and accounts, checks of unknown ids, wrong codes, bad keys from
    the victim's connecting address), the other client's start and check for any of those
    numbers, addresses and accounts are served, unless a global ceiling refuses (and then the
    refusal says so). Limits are small so the attacker fills them often."""
    app = make_app(
        OTPSVC_VELOCITY_PHONE="2 per hour",
        OTPSVC_VELOCITY_PREFIX="3 per hour",
        OTPSVC_VELOCITY_COUNTRY="4 per hour",
        OTPSVC_VELOCITY_IP="2 per hour",
        OTPSVC_VELOCITY_USER="2 per hour",
        OTPSVC_VELOCITY_CLIENT="6 per hour",
        OTPSVC_RATE_LIMIT_START_IP="3 per minute",
        OTPSVC_RATE_LIMIT_CHECK_IP="3 per minute",
        OTPSVC_RATE_LIMIT_AUTH_FAILURES="2 per minute",
        OTPSVC_MAX_FAILED_CHECKS_PER_NUMBER="2",
        OTPSVC_RESEND_COOLDOWN="0",
    )
    attacker, victim = Api(app, KEY_A, openapi), Api(app, KEY_B, openapi)
    guesser = Api(app, "Wrong_key_0123456789abcdefXYZ", openapi)
    seen = {"attacker_refusals": 0, "examples": 0}

    @settings(max_examples=40, deadline=None, derandomize=True, database=None)
    @given(actions=st.lists(ACTION, min_size=8, max_size=16), target=st.integers(0, 2))
    def run(actions: list[tuple[str, ...]], target: int) -> None:
        redis_client.flushdb()
        open_ids: dict[int, str] = {}
        for action in actions:
            kind, first = action[0], int(action[1])
            if kind == "start":
                body = {"ip": ADDRESSES[int(action[2])], "user_id": f"u{action[3]}"}
                answer = attacker.start(PEOPLE[first], end_user=body)
                if answer.status_code in (200, 201):
                    open_ids[first] = answer.get_json()["id"]
                else:
                    seen["attacker_refusals"] += 1
            elif kind == "check_unknown":
                body = {"id": "e" * 36, "code": "123456", "end_user": {"ip": ADDRESSES[first]}}
                attacker.request("POST", "/otp/check", json=body)
            elif kind == "check_wrong" and first in open_ids:
                attacker.check(open_ids[first], "000000")
            elif kind == "bad_key":
                guesser.request("GET", "/otp/" + "0" * 36, environ_base={"REMOTE_ADDR": "10.9.9.9"})
        seen["examples"] += 1
        person = {"ip": ADDRESSES[target], "user_id": f"u{target}"}
        env = {"REMOTE_ADDR": "10.9.9.9"}
        started = victim.request(
            "POST",
            "/otp/start",
            json={"phone": PEOPLE[target], "end_user": person},
            environ_base=env,
        )
        if started.status_code != 201:
            assert started.get_json().get("scope") == "global", started.get_json()
            return
        code = termii.code_for(PEOPLE[target])
        body = {"id": started.get_json()["id"], "code": code, "end_user": {"ip": person["ip"]}}
        checked = victim.request("POST", "/otp/check", json=body, environ_base=env)
        assert checked.status_code == 200, checked.get_json()
        assert checked.get_json()["valid"] is True

    run()
    # The attacker's own limits did refuse it, often: the victim was served despite full counters.
    assert seen["attacker_refusals"] > 20, seen
    pytest.FIGURES["per-client limits, property"] = (  # type: ignore[attr-defined]
        f"{seen['examples']} random attacker traffic runs ({seen['attacker_refusals']} of the "
        "attacker's starts refused by its own limits): the victim was served every time"
    )
