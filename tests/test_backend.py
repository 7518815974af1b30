"""otpsvc as it is really called: by one backend or gateway address, for many people at once.

``end_user`` names the person behind a request, so per-IP limits count the person, not the
backend; request limits that guard the API count per API client; failed authentication counts per
connecting address.
"""

from __future__ import annotations

import pytest
import redis

from otpsvc.config import Settings
from tests.conftest import KEY_A, KEY_B, Api, FakeClock
from tests.fakes.termii import FakeTermii

BACKEND = "203.0.113.10"
#: The shipped defaults of every limit a start or a check meets.
DEFAULTS = {
    "OTPSVC_RATE_LIMIT_START_IP": Settings.rate_limit_start_ip,
    "OTPSVC_RATE_LIMIT_CHECK_IP": Settings.rate_limit_check_ip,
    "OTPSVC_VELOCITY_PHONE": Settings.velocity_phone,
    "OTPSVC_VELOCITY_IP": Settings.velocity_ip,
    "OTPSVC_VELOCITY_PREFIX": Settings.velocity_prefix,
}


def person(i: int) -> tuple[str, str]:
    """The i-th person: a Nigerian mobile number of its own prefix, and an address (half IPv6)."""
    phone = f"+234803{100 + i:03d}4567"
    ip = f"198.51.100.{i + 1}" if i % 2 else f"2001:db8:{i + 1:x}::17"
    return phone, ip


def from_backend(api: Api, method: str, path: str, **kwargs: object):  # type: ignore[no-untyped-def]
    return api.request(method, path, environ_base={"REMOTE_ADDR": BACKEND}, **kwargs)


def test_one_backend_address_serves_forty_people_on_the_defaults(
    make_app, openapi, termii: FakeTermii
):
    """40 people behind one backend address: 40 calls placed and 40 codes approved."""
    api = Api(make_app(**DEFAULTS), KEY_A, openapi)
    verifications = []
    for i in range(40):
        phone, ip = person(i)
        body = {"phone": phone, "end_user": {"ip": ip, "user_id": f"account-{i}"}}
        response = from_backend(api, "POST", "/otp/start", json=body)
        assert response.status_code == 201, (i, response.get_json())
        verifications.append((response.get_json()["id"], termii.last_code(), ip))
    assert len(termii.calls) == 40
    for vid, code, ip in verifications:
        body = {"id": vid, "code": code, "end_user": {"ip": ip}}
        response = from_backend(api, "POST", "/otp/check", json=body)
        assert response.get_json()["valid"] is True


def test_without_end_user_the_backend_address_is_the_one_counted(
    make_app, openapi, termii: FakeTermii
):
    """Without ``end_user`` every start counts the connecting address: the 11th in a minute is
    refused. This is what a backend meets unless it names the person."""
    api = Api(make_app(**DEFAULTS), KEY_A, openapi)
    statuses = [
        from_backend(api, "POST", "/otp/start", json={"phone": person(i)[0]}).status_code
        for i in range(11)
    ]
    assert statuses == [201] * 10 + [429]
    assert len(termii.calls) == 10


def test_rotating_the_low_bits_of_one_ipv6_64_does_not_help(make_app, openapi, termii: FakeTermii):
    """One person's /64 with a new interface id on every request: the 11th start is refused."""
    api = Api(make_app(**DEFAULTS), KEY_A, openapi)
    statuses = []
    for i in range(11):
        ip = f"2001:db8:aa:bb:{i:x}:{i * 7:x}:{i * 13:x}:1"
        body = {"phone": person(i)[0], "end_user": {"ip": ip}}
        statuses.append(from_backend(api, "POST", "/otp/start", json=body).status_code)
    assert statuses == [201] * 10 + [429]
    assert len(termii.calls) == 10


def test_the_call_limit_per_ip_counts_the_ipv6_network_too(
    make_app, openapi, termii: FakeTermii, clock: FakeClock
):
    """OTPSVC_VELOCITY_IP (calls, not requests) counts the /64 as well: 10 calls an hour."""
    api = Api(
        make_app(**{**DEFAULTS, "OTPSVC_RATE_LIMIT_START_IP": "1000 per minute"}), KEY_A, openapi
    )
    statuses = []
    for i in range(11):
        clock.advance(60)
        body = {"phone": person(i)[0], "end_user": {"ip": f"2001:db8:aa:bb::{i + 1:x}"}}
        statuses.append(from_backend(api, "POST", "/otp/start", json=body).status_code)
    assert statuses == [201] * 10 + [429]


@pytest.mark.parametrize(
    ("prefix", "first", "second", "shared"),
    [
        ("64", "2001:db8:1:2::1", "2001:db8:1:3::1", False),
        ("48", "2001:db8:1:2::1", "2001:db8:1:3::1", True),
        ("128", "2001:db8:1:2::1", "2001:db8:1:2::2", False),
        ("64", "::ffff:198.51.100.9", "198.51.100.9", True),
    ],
)
def test_ipv6_prefix_setting_decides_what_one_address_is(
    make_app, openapi, prefix, first, second, shared
):
    """OTPSVC_IPV6_PREFIX sets the network size; an IPv4-mapped address is its IPv4 address."""
    api = Api(
        make_app(OTPSVC_RATE_LIMIT_START_IP="1 per minute", OTPSVC_IPV6_PREFIX=prefix),
        KEY_A,
        openapi,
    )
    assert api.start(person(0)[0], end_user={"ip": first}).status_code == 201
    second_status = api.start(person(1)[0], end_user={"ip": second}).status_code
    assert second_status == (429 if shared else 201)


def test_user_id_has_its_own_call_limit_kept_as_a_keyed_hash(
    make_app, openapi, termii: FakeTermii, redis_client: redis.Redis
):
    """One account asking for calls to 6 numbers from 6 addresses: 5 calls an hour. Redis holds
    neither the account id nor the addresses in the clear."""
    api = Api(make_app(**DEFAULTS), KEY_A, openapi)
    statuses = []
    for i in range(6):
        phone, ip = person(i)
        body = {"phone": phone, "end_user": {"ip": ip, "user_id": "acct-7f3e9"}}
        statuses.append(from_backend(api, "POST", "/otp/start", json=body).status_code)
    assert statuses == [201] * 5 + [429]
    dump = " ".join(redis_client.keys("*"))
    for key in redis_client.keys("*"):
        if redis_client.type(key) == "zset":
            dump += " ".join(redis_client.zrange(key, 0, -1))
    assert "acct-7f3e9" not in dump
    assert "198.51.100" not in dump
    assert "2001:db8" not in dump


def test_user_ids_of_two_clients_are_counted_apart(make_app, openapi, termii: FakeTermii):
    """The same user_id at two apps is two people."""
    app = make_app(OTPSVC_VELOCITY_USER="1 per hour")
    a, b = Api(app, KEY_A, openapi), Api(app, KEY_B, openapi)
    assert a.start(person(0)[0], end_user={"user_id": "42"}).status_code == 201
    assert b.start(person(1)[0], end_user={"user_id": "42"}).status_code == 201
    assert a.start(person(2)[0], end_user={"user_id": "42"}).status_code == 429


@pytest.mark.parametrize(
    ("end_user", "field"),
    [
        ({"ip": "1.2.3.4", "nickname": "x"}, "end_user.nickname"),
        ({"ip": "300.1.1.1"}, "end_user.ip"),
        ({"ip": "2001:db8::/64"}, "end_user.ip"),
        ({"ip": 17}, "end_user.ip"),
        ({"user_id": ""}, "end_user.user_id"),
        ({"user_id": "x" * 129}, "end_user.user_id"),
        ({"user_id": "line\n"}, "end_user.user_id"),
        ({"user_id": "caf\u00e9"}, "end_user.user_id"),
        ("1.2.3.4", "end_user"),
    ],
)
def test_bad_end_user_is_422_naming_the_field(api: Api, termii: FakeTermii, end_user, field):
    """Unknown or malformed fields inside end_user are named with their path; no call."""
    response = api.start(end_user=end_user)
    assert response.status_code == 422
    assert field in response.get_json()["errors"]
    assert not termii.calls


def test_failed_authentication_is_limited_per_connecting_address(
    make_app, openapi, clock: FakeClock
):
    """Over OTPSVC_RATE_LIMIT_AUTH_FAILURES an address gets 429 for every further wrong key, so
    key guessing stops there; a valid key from that same address is still served (tenants
    behind one egress address must not lock each other out); the window passes."""
    app = make_app(OTPSVC_RATE_LIMIT_AUTH_FAILURES="3 per minute")
    guesser = Api(app, "not-a-key-0123456789abcdef", openapi)
    env = {"REMOTE_ADDR": "192.0.2.66"}
    statuses = [
        guesser.request("GET", "/otp/" + "0" * 36, environ_base=env).status_code for _ in range(4)
    ]
    assert statuses == [401, 401, 401, 429]
    refused = guesser.request("GET", "/otp/" + "0" * 36, environ_base=env).get_json()
    assert (refused["limit"], refused["scope"]) == ("rate_limit_auth_failures", "address")
    right = Api(app, KEY_A, openapi)
    assert right.request("GET", "/otp/" + "0" * 36, environ_base=env).status_code == 404
    elsewhere = {"REMOTE_ADDR": "192.0.2.67"}
    assert guesser.request("GET", "/otp/" + "0" * 36, environ_base=elsewhere).status_code == 401
    clock.advance(61)
    assert guesser.request("GET", "/otp/" + "0" * 36, environ_base=env).status_code == 401


def test_request_limit_per_client_counts_each_client_apart(make_app, openapi, termii):
    """OTPSVC_RATE_LIMIT_CLIENT counts a client's requests whatever end_user they name."""
    app = make_app(OTPSVC_RATE_LIMIT_CLIENT="3 per minute")
    a, b = Api(app, KEY_A, openapi), Api(app, KEY_B, openapi)
    statuses = [a.start(person(i)[0], end_user={"ip": person(i)[1]}).status_code for i in range(4)]
    assert statuses == [201, 201, 201, 429]
    assert a.get("0" * 36).status_code == 429
    assert b.start(person(5)[0]).status_code == 201
