"""flask-limiter limits on the same Redis: per IP and per number; proxies are not trusted."""

from __future__ import annotations

from tests.conftest import KEY_A, Api
from tests.fakes.termii import FakeTermii

PHONES = [f"+23480312345{i:02d}" for i in range(10)]


def start_as(api: Api, phone: str, *, ip: str | None = None, forwarded: str | None = None) -> int:
    """Start from a given socket address and/or with an X-Forwarded-For header; the status."""
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    environ = {"REMOTE_ADDR": ip} if ip else {}
    response = api.request(
        "POST", "/otp/start", json={"phone": phone}, headers=headers, environ_base=environ
    )
    return response.status_code


def test_start_limit_per_ip_is_429_with_retry_after_and_no_call(
    make_app, openapi, termii: FakeTermii
):
    """Over OTPSVC_RATE_LIMIT_START_IP a start is 429 rate_limited with Retry-After; no call."""
    api = Api(make_app(OTPSVC_RATE_LIMIT_START_IP="2 per minute"), KEY_A, openapi)
    assert [api.start(p).status_code for p in PHONES[:2]] == [201, 201]
    response = api.start(PHONES[2])
    assert response.status_code == 429
    assert response.get_json()["code"] == "rate_limited"
    # The breached limit's window: never earlier than the truth.
    assert int(response.headers["Retry-After"]) == 60
    assert len(termii.calls) == 2


def test_starts_refused_before_the_call_limits_count_against_the_request_limit(
    make_app, openapi, termii: FakeTermii
):
    """The start limit rides in the call limits' round trip, yet a start refused earlier (a
    country not served, a mode no route takes) still counts, and over the limit it is a 429 in
    place of that refusal; a start refused by the call limits still counts too."""
    api = Api(
        make_app(OTPSVC_RATE_LIMIT_START_IP="3 per minute", OTPSVC_VELOCITY_PHONE="1 per hour"),
        KEY_A,
        openapi,
    )
    assert api.start("+81312345678").get_json()["code"] == "country_not_allowed"
    assert api.start(PHONES[0]).status_code == 201
    assert api.start(PHONES[0]).get_json()["code"] in ("resend_too_soon", "rate_limited")
    assert api.start("+81312345678").get_json()["code"] == "rate_limited"
    refused = api.start(PHONES[1])
    assert (refused.status_code, refused.get_json()["code"]) == (429, "rate_limited")
    assert len(termii.calls) == 1


def test_calls_per_number_hold_across_ips(make_app, openapi, termii: FakeTermii):
    """Over OTPSVC_VELOCITY_PHONE, one number gets no more calls, whichever address asks."""
    api = Api(
        make_app(OTPSVC_VELOCITY_PHONE="2 per hour", OTPSVC_RESEND_COOLDOWN="0"),
        KEY_A,
        openapi,
    )
    statuses = [start_as(api, PHONES[0], ip=f"10.0.0.{i}") for i in range(3)]
    assert statuses == [201, 200, 429]
    assert len(termii.calls) == 2


def test_invalid_numbers_do_not_spend_the_number_limit(make_app, openapi):
    """A 422 for an unreadable number leaves the per-number limit alone (it has no bucket)."""
    api = Api(make_app(OTPSVC_VELOCITY_PHONE="1 per hour"), KEY_A, openapi)
    assert api.start("nonsense").status_code == 422
    assert api.start("nonsense").status_code == 422
    assert api.start(PHONES[0]).status_code == 201


def test_check_limit_per_ip(make_app, openapi):
    """Over OTPSVC_RATE_LIMIT_CHECK_IP a check is 429 before any code is compared."""
    api = Api(make_app(OTPSVC_RATE_LIMIT_CHECK_IP="3 per minute"), KEY_A, openapi)
    statuses = [api.check("0" * 36, "123456").status_code for _ in range(4)]
    assert statuses == [404, 404, 404, 429]


def test_spoofed_forwarded_for_is_ignored_by_default(make_app, openapi, termii: FakeTermii):
    """With no trusted proxies a changing X-Forwarded-For does not open a new per-IP bucket."""
    api = Api(make_app(OTPSVC_RATE_LIMIT_START_IP="2 per minute"), KEY_A, openapi)
    statuses = [start_as(api, p, forwarded=f"198.51.100.{i}") for i, p in enumerate(PHONES[:3])]
    assert statuses == [201, 201, 429]


def test_trusted_proxy_hop_gives_each_client_its_own_bucket(make_app, openapi):
    """With OTPSVC_TRUSTED_PROXIES=1 the address from the proxy's X-Forwarded-For is limited."""
    api = Api(
        make_app(
            OTPSVC_RATE_LIMIT_START_IP="1 per minute",
            OTPSVC_TRUSTED_PROXIES="1",
            OTPSVC_TRUSTED_PROXY_NETWORKS="127.0.0.0/8",
        ),
        KEY_A,
        openapi,
    )
    first = [start_as(api, p, forwarded=f"198.51.100.{i}") for i, p in enumerate(PHONES[:3])]
    assert first == [201, 201, 201]
    assert start_as(api, PHONES[5], forwarded="198.51.100.0") == 429


def test_limits_are_shared_by_app_instances(make_app, openapi):
    """Two app instances (two workers) on one Redis share one per-IP budget."""
    env = {"OTPSVC_RATE_LIMIT_START_IP": "2 per minute"}
    one, two = Api(make_app(**env), KEY_A, openapi), Api(make_app(**env), KEY_A, openapi)
    assert one.start(PHONES[0]).status_code == 201
    assert two.start(PHONES[1]).status_code == 201
    assert one.start(PHONES[2]).status_code == 429


def test_a_client_inventing_addresses_cannot_fill_redis(make_app, openapi, redis_client):
    """A client naming a new end_user.ip on every start makes per-person windows (about 540
    bytes each for the hour) only up to OTPSVC_END_USER_ADDRESSES_MAX a clock hour; past it a
    request for a new end user is 429 and leaves nothing in Redis, while the addresses already
    seen, and another client, go on."""
    from tests.conftest import KEY_A, KEY_B, Api

    app = make_app(OTPSVC_END_USER_ADDRESSES_MAX="100")
    hostile, other = Api(app, KEY_A, openapi), Api(app, KEY_B, openapi)

    def start(api: Api, i: int, address: str):
        return api.request(
            "POST",
            "/otp/start",
            json={"phone": f"+2348032{i:06d}", "end_user": {"ip": address}},
        )

    for i in range(100):
        assert start(hostile, i, f"10.1.{i // 250}.{i % 250}").status_code == 201
    windows = len(redis_client.keys("*:start_ip:*"))
    refused = [start(hostile, 1000 + i, f"10.2.0.{i}") for i in range(20)]
    assert {r.status_code for r in refused} == {429}
    assert refused[0].get_json()["limit"] == "end_user_addresses"
    assert len(redis_client.keys("*:start_ip:*")) == windows
    assert start(hostile, 2000, "10.1.0.7").status_code == 201  # seen this hour
    assert start(other, 3000, "10.2.0.1").status_code == 201  # another client's own count
