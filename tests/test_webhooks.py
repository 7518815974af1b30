"""Provider callbacks: signatures, replay, staleness, delivery status, and keypress approval."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets

import pytest

from tests.conftest import (
    CEQUENS_ONLY,
    KEY_A,
    PUBLIC_URL,
    SEVENIO_SIGNING_KEY,
    TERMII_WEBHOOK_SECRET,
    Api,
    FakeClock,
    wrong_code,
)
from tests.fakes.cequens import FakeCequens
from tests.fakes.sevenio import FakeSevenio
from tests.fakes.termii import FakeTermii

DE = "+4915123456789"


def signed_sevenio(
    payload: dict, timestamp: int, *, nonce: str | None = None, key=SEVENIO_SIGNING_KEY
):
    """Headers and body as seven.io signs them: HMAC-SHA256 over ts, nonce, method, URL, md5."""
    body = json.dumps(payload).encode()
    nonce = nonce or secrets.token_hex(16)
    text = "\n".join(
        [
            str(timestamp),
            nonce,
            "POST",
            f"{PUBLIC_URL}/webhooks/sevenio",
            hashlib.md5(body, usedforsecurity=False).hexdigest(),
        ]
    )
    signature = hmac.new(key.encode(), text.encode(), hashlib.sha256).hexdigest()
    headers = {"X-Signature": signature, "X-Nonce": nonce, "X-Timestamp": str(timestamp)}
    return headers, body


class Seven:
    """A seven.io-routed app, and a way to send it signed hooks."""

    def __init__(self, api: Api, clock: FakeClock) -> None:
        self.api = api
        self.clock = clock
        self.hooks = Api(api.app, None, api.openapi)

    def hook(self, event: str, data: dict, **sign):
        headers, body = signed_sevenio(
            {"webhook_event": event, "webhook_timestamp": int(self.clock()), "data": data},
            int(self.clock()),
            **sign,
        )
        return self.hooks.request(
            "POST", "/webhooks/sevenio", data=body, headers=headers, content_type="application/json"
        )


@pytest.fixture
def seven(make_app, openapi, clock: FakeClock) -> Seven:
    # Keypress on seven.io is unconfirmed, so an operator turns it on explicitly.
    app = make_app(OTPSVC_PROVIDERS="sevenio", OTPSVC_SEVENIO_KEYPRESS="true")
    return Seven(Api(app, KEY_A, openapi), clock)


def started(seven: Seven, **fields) -> dict:
    return seven.api.start(DE, **fields).get_json()


def test_status_report_shows_in_the_verification(seven: Seven):
    """voice_status 'ringing' then 'completed' show up in GET, found by the message id."""
    data = started(seven)
    mid = data["delivery"]["provider_message_id"]
    assert (
        seven.hook("voice_status", {"id": mid, "status": "ringing"}).get_json()["result"]
        == "applied"
    )
    assert seven.api.get(data["id"]).get_json()["delivery"]["status"] == "ringing"
    seven.hook("voice_status", {"id": mid, "status": "completed"})
    assert seven.api.get(data["id"]).get_json()["delivery"]["status"] == "completed"


def test_reports_are_idempotent_and_never_go_backwards(seven: Seven):
    """The same report twice changes nothing the second time; 'ringing' after 'completed' loses."""
    data = started(seven)
    mid = data["delivery"]["provider_message_id"]
    assert (
        seven.hook("voice_status", {"id": mid, "status": "completed"}).get_json()["result"]
        == "applied"
    )
    assert (
        seven.hook("voice_status", {"id": mid, "status": "completed"}).get_json()["result"]
        == "ignored"
    )
    assert (
        seven.hook("voice_status", {"id": mid, "status": "ringing"}).get_json()["result"]
        == "ignored"
    )
    assert seven.api.get(data["id"]).get_json()["delivery"]["status"] == "completed"


def test_no_answer_lifts_the_resend_cooldown(seven: Seven, sevenio: FakeSevenio):
    """After 'no-answer' a new call may be asked for at once, without waiting the cooldown."""
    data = started(seven)
    assert seven.api.start(DE).status_code == 429
    seven.hook(
        "voice_status", {"id": data["delivery"]["provider_message_id"], "status": "no-answer"}
    )
    assert seven.api.start(DE).status_code == 200
    assert len(sevenio.calls) == 2


def test_report_for_an_older_send_is_ignored(seven: Seven, clock: FakeClock):
    """A report naming the first call's message id does not touch the resend's status."""
    first = started(seven)
    clock.advance(31)
    seven.api.start(DE)
    result = seven.hook(
        "voice_status", {"id": first["delivery"]["provider_message_id"], "status": "failed"}
    )
    assert result.get_json()["result"] == "ignored"


def test_bad_signature_is_401_and_changes_nothing(seven: Seven):
    """A hook signed with another key is refused and the status is untouched."""
    data = started(seven)
    mid = data["delivery"]["provider_message_id"]
    response = seven.hook(
        "voice_status", {"id": mid, "status": "completed"}, key="not-the-signing-key"
    )
    assert response.status_code == 401
    assert seven.api.get(data["id"]).get_json()["delivery"]["status"] == "queued"


@pytest.mark.parametrize(("age", "status"), [(200, 200), (299, 200), (301, 401)])
def test_hook_age_window_is_300_seconds_by_default(seven: Seven, clock: FakeClock, age, status):
    """seven.io retries hourly and its own verifier allows 300 s of skew: so does this one."""
    data = started(seven)
    headers, body = signed_sevenio(
        {
            "webhook_event": "voice_status",
            "data": {"id": data["delivery"]["provider_message_id"], "status": "ringing"},
        },
        int(clock()) - age,
    )
    response = seven.hooks.request(
        "POST", "/webhooks/sevenio", data=body, headers=headers, content_type="application/json"
    )
    assert response.status_code == status


def test_stale_timestamp_is_refused(make_app, openapi, clock: FakeClock):
    """With OTPSVC_SEVENIO_WEBHOOK_MAX_AGE=30, a correctly signed hook 31 s old is refused."""
    seven = Seven(
        Api(
            make_app(OTPSVC_PROVIDERS="sevenio", OTPSVC_SEVENIO_WEBHOOK_MAX_AGE="30"),
            KEY_A,
            openapi,
        ),
        clock,
    )
    data = started(seven)
    headers, body = signed_sevenio(
        {
            "webhook_event": "voice_status",
            "data": {"id": data["delivery"]["provider_message_id"], "status": "completed"},
        },
        int(clock()) - 31,
    )
    response = seven.hooks.request(
        "POST", "/webhooks/sevenio", data=body, headers=headers, content_type="application/json"
    )
    assert response.status_code == 401


def test_replayed_nonce_is_refused(seven: Seven):
    """The same signed hook sent twice: the second is 401."""
    data = started(seven)
    headers, body = signed_sevenio(
        {
            "webhook_event": "voice_status",
            "data": {"id": data["delivery"]["provider_message_id"], "status": "ringing"},
        },
        int(seven.clock()),
    )
    first = seven.hooks.request(
        "POST", "/webhooks/sevenio", data=body, headers=headers, content_type="application/json"
    )
    again = seven.hooks.request(
        "POST", "/webhooks/sevenio", data=body, headers=headers, content_type="application/json"
    )
    assert first.status_code == 200
    assert again.status_code == 401


def test_key_press_never_approves_a_code_verification(seven: Seven):
    """A DTMF '1' on a code-mode call is ignored: only the code approves."""
    data = started(seven)
    result = seven.hook(
        "voice_dtmf", {"id": data["delivery"]["provider_message_id"], "dtmf_digit": "1"}
    )
    assert result.get_json()["result"] == "ignored"
    assert seven.api.get(data["id"]).get_json()["status"] == "pending"


def test_keypress_1_approves(seven: Seven, sevenio: FakeSevenio):
    """mode=keypress: the call asks for 1 or 9; pressing 1 approves, polled through GET."""
    data = started(seven, mode="keypress")
    assert data["mode"] == "keypress"
    assert "drücken Sie die Taste 1" in sevenio.calls[-1].form["text"]
    mid = data["delivery"]["provider_message_id"]
    assert seven.api.get(data["id"]).get_json()["status"] == "pending"
    assert (
        seven.hook("voice_dtmf", {"id": mid, "dtmf_digit": "1"}).get_json()["result"] == "approved"
    )
    assert seven.api.get(data["id"]).get_json()["status"] == "approved"
    assert seven.api.check(data["id"], "123456").status_code == 404


def test_keypress_9_denies_and_blocks_the_number(seven: Seven, sevenio: FakeSevenio):
    """Pressing 9 marks the verification denied, and new starts for the number get 429."""
    data = started(seven, mode="keypress")
    seven.hook("voice_dtmf", {"id": data["delivery"]["provider_message_id"], "dtmf_digit": "9"})
    assert seven.api.get(data["id"]).get_json()["status"] == "denied"
    blocked = seven.api.start(DE)
    assert blocked.status_code == 429
    assert blocked.get_json()["code"] == "number_blocked"
    assert int(blocked.headers["Retry-After"]) > 3000
    assert len(sevenio.calls) == 1


def test_keypress_needs_a_provider_that_reports_keys(api: Api, termii: FakeTermii):
    """On a Termii-only route keypress mode is a 422 naming 'mode', and nothing is called."""
    response = api.start(mode="keypress")
    assert response.status_code == 422
    assert "mode" in response.get_json()["errors"]
    assert termii.calls == []


@pytest.fixture
def cequens_api(make_app, openapi) -> Api:
    return Api(make_app(**CEQUENS_ONLY), KEY_A, openapi)


def test_cequens_status_callback_with_its_token(cequens_api: Api, cequens: FakeCequens):
    """The status URL given to CEQUENS works; a made-up token is 401."""
    data = cequens_api.start("+201001234567").get_json()
    status_url = cequens.calls[-1].json["statusCallbackEndpoint"].removeprefix(PUBLIC_URL)
    hooks = Api(cequens_api.app, None, cequens_api.openapi)
    assert (
        hooks.request("POST", status_url, json={"status": "answered"}).get_json()["result"]
        == "applied"
    )
    assert cequens_api.get(data["id"]).get_json()["delivery"]["status"] == "in-progress"
    forged = status_url.replace(status_url.split("/")[3], data["id"] + "." + "0" * 32)
    assert hooks.request("POST", forged, json={"status": "failed"}).status_code == 401
    assert cequens_api.get(data["id"]).get_json()["delivery"]["status"] == "in-progress"


def test_cequens_keypress_by_get_callback(cequens_api: Api, cequens: FakeCequens):
    """Keypress on CEQUENS: collectDtmf is on, and a GET to the DTMF URL with 1 approves."""
    data = cequens_api.start("+201001234567", mode="keypress").get_json()
    body = cequens.calls[-1].json
    assert body["collectDtmf"] is True
    dtmf_url = body["dtmfCallbackEndpoint"].removeprefix(PUBLIC_URL)
    hooks = Api(cequens_api.app, None, cequens_api.openapi)
    assert hooks.request("GET", dtmf_url + "?dtmf=1").get_json()["result"] == "approved"
    assert cequens_api.get(data["id"]).get_json()["status"] == "approved"


def post_termii(api: Api, body: bytes, signature: str | None = None):
    """POST a Termii event, signed with the webhook secret unless ``signature`` is given."""
    if signature is None:
        signature = hmac.new(TERMII_WEBHOOK_SECRET.encode(), body, hashlib.sha512).hexdigest()
    return Api(api.app, None, api.openapi).request(
        "POST",
        "/webhooks/termii",
        data=body,
        headers={"X-Termii-Signature": signature},
        content_type="application/json",
    )


def test_termii_events_need_the_hmac_sha512_signature(make_app, openapi, termii: FakeTermii):
    """Signed Termii events update the status; a wrong signature is 401."""
    api = Api(make_app(OTPSVC_TERMII_WEBHOOK_SECRET=TERMII_WEBHOOK_SECRET), KEY_A, openapi)
    data = api.start().get_json()
    body = json.dumps(
        {
            "type": "voice",
            "message_id": data["delivery"]["provider_message_id"],
            "status": "DELIVERED",
        }
    ).encode()
    assert post_termii(api, body, "0" * 128).status_code == 401
    assert post_termii(api, body).get_json()["result"] == "applied"
    assert api.get(data["id"]).get_json()["delivery"]["status"] == "completed"


def test_termii_events_are_off_without_a_secret(app, openapi):
    """Without OTPSVC_TERMII_WEBHOOK_SECRET the endpoint does not exist (404)."""
    hooks = Api(app, None, openapi)
    response = hooks.request(
        "POST", "/webhooks/termii", json={"message_id": "1", "status": "DELIVERED"}
    )
    assert response.status_code == 404


def test_delivery_report_never_approves_a_code(seven: Seven):
    """After a 'completed' report the verification still needs its code."""
    data = started(seven)
    seven.hook(
        "voice_status", {"id": data["delivery"]["provider_message_id"], "status": "completed"}
    )
    assert seven.api.get(data["id"]).get_json()["status"] == "pending"
    assert seven.api.check(data["id"], wrong_code("123456")).get_json()["valid"] is False


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/webhooks/cequens/%C3%A9t%C3%A9.%C3%BC/status", {}),
        ("/webhooks/sevenio", {"X-Signature": "é" * 64, "X-Nonce": "n", "X-Timestamp": "1"}),
        ("/webhooks/termii", {"X-Termii-Signature": "ü" * 128}),
    ],
)
def test_non_ascii_tokens_and_signatures_are_401_not_500(make_app, openapi, path, headers):
    """Non-ASCII in a callback token or a signature header is a plain 401 (was a 500)."""
    app = make_app(
        OTPSVC_PROVIDERS="termii,sevenio", OTPSVC_TERMII_WEBHOOK_SECRET=TERMII_WEBHOOK_SECRET
    )
    hooks = Api(app, None, openapi)
    response = hooks.request("POST", path, json={"status": "completed"}, headers=headers)
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("reported", "shown"),
    [
        ("Delivered", "completed"),
        ("DELIVERED | Message delivered to handset", "completed"),
        ("Message Failed", "failed"),
        ("DND Active on Phone Number", "failed"),
    ],
)
def test_termii_report_words_in_any_case_and_older_form(
    make_app, openapi, termii: FakeTermii, reported: str, shown: str
):
    api = Api(make_app(OTPSVC_TERMII_WEBHOOK_SECRET=TERMII_WEBHOOK_SECRET), KEY_A, openapi)
    data = api.start().get_json()
    body = json.dumps(
        {"message_id": data["delivery"]["provider_message_id"], "status": reported}
    ).encode()
    assert post_termii(api, body).get_json()["result"] == "applied"
    assert api.get(data["id"]).get_json()["delivery"]["status"] == shown


def test_wrong_cequens_tokens_count_as_failed_authentications(cequens_api: Api):
    """A callback token is the endpoint's only credential: guessing one is limited per address
    like guessing an API key (429 once past OTPSVC_RATE_LIMIT_AUTH_FAILURES, 10 a minute)."""
    hooks = Api(cequens_api.app, None, cequens_api.openapi)
    statuses = [
        hooks.request(
            "POST",
            f"/webhooks/cequens/{'0' * 36}.{i:032d}/status",
            json={"status": "failed"},
            environ_base={"REMOTE_ADDR": "192.0.2.44"},
        ).status_code
        for i in range(12)
    ]
    assert statuses[:10] == [401] * 10
    assert statuses[10:] == [429, 429]


def test_a_sevenio_status_report_without_its_call_id_is_ignored(make_app, openapi, clock):
    """A signed voice_status naming the verification (foreign_id) but not the call (id) changes
    nothing: it could be about an earlier send, and must not move a ladder on."""
    app = make_app(
        OTPSVC_PROVIDERS="sevenio",
        OTPSVC_LADDER="voice:sevenio/30,voice:sevenio",
    )
    seven = Seven(Api(app, KEY_A, openapi), clock)
    started = seven.api.start(DE).get_json()
    answer = seven.hook("voice_status", {"foreign_id": started["id"], "status": "no-answer"})
    assert answer.get_json()["result"] == "ignored"
    view = seven.api.get(started["id"]).get_json()
    assert view["delivery"]["status"] == "queued"
    assert view["ladder"]["steps"][0]["status"] == "queued"
