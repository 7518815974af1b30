"""Dev mode: the call inbox page, its live stream, /dev/calls?wait, fault injection, /docs.

The apps run on the real Redis; where a delivery report must come back as a webhook, or a
stream must be read as a browser reads it, the app is served over real HTTP on loopback.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources

import pytest
import requests
from flask import Flask
from werkzeug.serving import make_server

from otpsvc.dev.inbox import CallInbox, InboxCall
from otpsvc.dev.redis_server import free_port
from tests.conftest import KEY_A, KEY_B, PHONE, Api

OTHER = "+2348031234599"
LOOPBACK = {"REMOTE_ADDR": "127.0.0.1"}


@contextmanager
def served(make_app: Callable[..., Flask], **env: str) -> Iterator[str]:
    """A dev-mode app on a real loopback HTTP server, its public URL its own address, so the
    console provider's reports come back through the webhook route."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    app = make_app(
        OTPSVC_DEV_MODE="true", OTPSVC_PROVIDERS="console", OTPSVC_PUBLIC_URL=base, **env
    )
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield base
    finally:
        server.shutdown()
        thread.join(5)


def page_post(app: Flask, path: str, body: dict, **headers: str):
    return app.test_client().post(path, json=body, headers=headers, environ_base=LOOPBACK)


def snapshot(app: Flask) -> dict:
    response = app.test_client().get("/dev/snapshot", environ_base=LOOPBACK)
    assert response.status_code == 200
    return response.get_json()


def newest_code(api: Api, phone: str = PHONE) -> str:
    calls = api.request("GET", "/dev/calls", query_string={"phone": phone}).get_json()["calls"]
    return calls[0]["code"]


# --- the page ---------------------------------------------------------------------------------


def test_root_opens_the_dev_page_only_in_dev_mode(dev_app: Flask, make_app):
    """In dev mode / redirects to /dev; outside it neither exists (404 problems)."""
    client = dev_app.test_client()
    root = client.get("/", environ_base=LOOPBACK)
    assert root.status_code == 302
    assert root.headers["Location"].endswith("/dev")
    page = client.get("/dev", environ_base=LOOPBACK)
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    production = make_app().test_client()
    for path in ("/", "/dev", "/dev/stream", "/dev/page/start"):
        assert production.get(path, environ_base=LOOPBACK).status_code in (404, 405)


@pytest.mark.parametrize(
    ("environ", "headers"),
    [
        ({"REMOTE_ADDR": "203.0.113.9"}, {}),  # another machine
        (LOOPBACK, {"Host": "otp.attacker.example"}),  # DNS rebinding onto loopback
        (LOOPBACK, {"Origin": "https://attacker.example"}),  # another site's page
    ],
)
def test_the_page_is_for_this_machine_only(dev_app: Flask, environ, headers):
    """No key is asked for, so the page refuses every request not from this machine's own
    pages: 403 and nothing started."""
    client = dev_app.test_client()
    started = client.post(
        "/dev/page/start", json={"phone": PHONE}, headers=headers, environ_base=environ
    )
    assert started.status_code == 403
    assert started.get_json()["code"] == "forbidden"
    assert client.get("/dev", headers=headers, environ_base=environ).status_code == 403
    assert snapshot(dev_app)["calls"] == []


def test_the_page_starts_and_checks_without_a_key_and_shows_none(dev_app: Flask):
    """The page's start and check act as the first client; the code shows on the page; a
    check from the page approves; no API key is ever in what the page gets."""
    started = page_post(dev_app, "/dev/page/start", {"phone": PHONE})
    assert started.status_code == 201
    vid = started.get_json()["id"]
    view = snapshot(dev_app)
    assert view["client"] == "client-a"
    (call,) = view["calls"]
    assert call["verification_id"] == vid
    assert call["phone"] == "+234*******567"
    assert call["status"] == "pending"
    assert call["lang"] == "en-US"
    assert re.fullmatch(r"\d{6}", call["code"])
    assert "phone_key" not in call
    assert "dtmf_token" not in call
    checked = page_post(dev_app, "/dev/page/check", {"id": vid, "code": call["code"]})
    assert checked.get_json()["valid"] is True
    assert snapshot(dev_app)["calls"][0]["status"] == "approved"
    client = dev_app.test_client()
    seen = b"".join(
        client.get(path, environ_base=LOOPBACK).data
        for path in ("/dev", "/dev/assets/dev.js", "/dev/assets/dev.css", "/dev/snapshot")
    )
    for secret in (KEY_A, KEY_B):
        assert secret.encode() not in seen


def test_bad_page_input_is_a_422_naming_the_field(dev_app: Flask):
    response = page_post(dev_app, "/dev/page/start", {"phone": "12"})
    assert response.status_code == 422
    assert "phone" in response.get_json()["errors"]
    press = page_post(dev_app, "/dev/page/press", {"id": "x", "key": "5"})
    assert set(press.get_json()["errors"]) == {"id", "key"}


@pytest.mark.parametrize(("key", "status"), [("1", "approved"), ("9", "denied")])
def test_keypress_buttons_act_as_the_person(dev_app: Flask, dev_api: Api, key, status):
    """A keypress call shows on the page; "press 1" approves it and "press 9" denies it,
    through the send's own callback token as a provider's callback would."""
    started = page_post(dev_app, "/dev/page/start", {"phone": PHONE, "mode": "keypress"})
    assert started.status_code == 201
    vid = started.get_json()["id"]
    call = snapshot(dev_app)["calls"][0]
    assert call["mode"] == "keypress"
    assert "press 1" in call["text"]
    pressed = page_post(dev_app, "/dev/page/press", {"id": vid, "key": key})
    assert pressed.get_json() == {"result": status}
    assert dev_api.get(vid).get_json()["status"] == status
    assert snapshot(dev_app)["calls"][0]["status"] == status
    # One key press per send, as with a provider's callbacks: a second changes nothing.
    again = page_post(dev_app, "/dev/page/press", {"id": vid, "key": "9" if key == "1" else "1"})
    assert again.get_json()["result"] not in ("approved", "denied")
    assert dev_api.get(vid).get_json()["status"] == status


def test_the_stream_pushes_each_call_without_a_reload(make_app):
    """Read /dev/stream as a browser's EventSource does: a first snapshot, then, when a call is
    placed, an event that holds it, within a second or so."""
    with (
        served(make_app) as base,
        requests.get(base + "/dev/stream", stream=True, timeout=10) as stream,
    ):
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        lines = stream.iter_lines(decode_unicode=True)
        events = _events(lines)
        assert next(events)["calls"] == []
        began = time.monotonic()
        started = requests.post(
            base + "/otp/start",
            json={"phone": PHONE},
            headers={"Authorization": f"Bearer {KEY_A}"},
            timeout=10,
        )
        vid = started.json()["id"]
        shown = next(events)
        assert shown["calls"][0]["verification_id"] == vid
        assert time.monotonic() - began < 5


def _events(lines: Iterator[str]) -> Iterator[dict]:
    """The ``calls`` events of a server-sent event stream, decoded."""
    name = None
    for line in lines:
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: ") and name == "calls":
            yield json.loads(line[len("data: ") :])
            name = None


# --- GET /dev/calls ---------------------------------------------------------------------------


def test_dev_calls_waits_for_the_newest_call_to_a_number(dev_app: Flask, dev_api: Api):
    """With wait, the answer comes when the call arrives, not after the whole wait."""
    starter = threading.Timer(0.5, lambda: Api(dev_app, KEY_A, dev_api.openapi).start(PHONE))
    began = time.monotonic()
    starter.start()
    response = dev_api.request("GET", "/dev/calls", query_string={"phone": PHONE, "wait": "10"})
    waited = time.monotonic() - began
    starter.join()
    (call,) = response.get_json()["calls"]
    assert call["phone"] == "+234*******567"
    assert 0.4 < waited < 5
    pytest.FIGURES["GET /dev/calls?wait=10, call placed after 0.5 s"] = (
        f"answered in {waited:.2f} s"  # type: ignore[attr-defined]
    )


def test_dev_calls_by_number_newest_first_and_after(dev_app: Flask, dev_api: Api, clock):
    first = dev_api.start(PHONE).get_json()["id"]
    dev_api.start(OTHER)
    calls = dev_api.request("GET", "/dev/calls", query_string={"phone": PHONE}).get_json()
    assert [c["verification_id"] for c in calls["calls"]] == [first]
    later = time.time() * 1000 + 60_000
    none = dev_api.request(
        "GET", "/dev/calls", query_string={"phone": PHONE, "after": str(later)}
    ).get_json()
    assert none == {"calls": []}
    began = time.monotonic()
    empty = dev_api.request(
        "GET", "/dev/calls", query_string={"phone": "+2348031230000", "wait": "0.3"}
    )
    assert empty.get_json() == {"calls": []}
    assert time.monotonic() - began >= 0.3
    # A "+" left unencoded in a query string arrives as a space: still the same number.
    spaced = dev_api.request("GET", f"/dev/calls?phone={PHONE}").get_json()
    assert spaced["calls"][0]["verification_id"] == first


def test_dev_calls_shows_a_client_only_its_own(dev_app: Flask, dev_api: Api, openapi):
    dev_api.start(PHONE)
    other = Api(dev_app, KEY_B, openapi)
    assert other.request("GET", "/dev/calls").get_json() == {"calls": []}
    assert other.request("GET", "/dev/calls", query_string={"phone": PHONE}).get_json() == {
        "calls": []
    }


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"phone": PHONE, "wait": "31"}, "wait"),
        ({"phone": PHONE, "wait": "-1"}, "wait"),
        ({"phone": PHONE, "wait": "soon"}, "wait"),
        ({"wait": "5"}, "phone"),
        ({"phone": "12"}, "phone"),
        ({"phone": PHONE, "after": "nan"}, "after"),
    ],
)
def test_dev_calls_bad_parameters_are_named(dev_api: Api, query, field):
    response = dev_api.request("GET", "/dev/calls", query_string=query)
    assert response.status_code == 422
    assert field in response.get_json()["errors"]


def test_the_inbox_lives_in_redis_for_every_worker(make_app, openapi, redis_url):
    """Two app instances on one Redis (two workers): a call placed through one is read through
    the other. The inbox is capped and expires."""
    one = Api(make_app(OTPSVC_DEV_MODE="true", OTPSVC_PROVIDERS="console"), KEY_A, openapi)
    two = Api(make_app(OTPSVC_DEV_MODE="true", OTPSVC_PROVIDERS="console"), KEY_A, openapi)
    vid = one.start(PHONE).get_json()["id"]
    calls = two.request("GET", "/dev/calls", query_string={"phone": PHONE}).get_json()["calls"]
    assert calls[0]["verification_id"] == vid
    inbox = one.app.extensions["otpsvc"].inbox
    assert 0 < inbox._redis.ttl(inbox._list) <= 24 * 3600
    small = CallInbox(inbox._redis, "capped-test", lambda e164: e164[-4:], size=3)
    for i in range(5):
        small.add(InboxCall(f"id{i}", "+234***", "1234", "text", at=i, client="c"))
    assert [c.verification_id for c in small.calls()] == ["id4", "id3", "id2"]


# --- fault injection --------------------------------------------------------------------------


def _poll_delivery(base: str, vid: str, want: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        answer = requests.get(
            f"{base}/otp/{vid}", headers={"Authorization": f"Bearer {KEY_A}"}, timeout=5
        )
        status = answer.json()["delivery"]["status"]
        if status == want:
            return status
        time.sleep(0.1)
    return status


@pytest.mark.parametrize("fault", ["no-answer", "busy", "failed"])
def test_a_call_fault_is_reported_by_webhook_as_a_provider_would(make_app, fault):
    """The call is accepted (201), then its report arrives through
    POST /webhooks/console/<token>/status and shows in GET /otp/{id}; the fault was for the
    next call only, so the call after it is normal (and reported completed)."""
    auth = {"Authorization": f"Bearer {KEY_A}"}
    with served(make_app) as base:
        set_fault = requests.post(
            base + "/dev/faults", json={"fault": fault}, headers=auth, timeout=10
        )
        assert set_fault.json() == {"next": fault, "numbers": 0}
        started = requests.post(
            base + "/otp/start", json={"phone": PHONE}, headers=auth, timeout=10
        )
        assert started.status_code == 201
        vid = started.json()["id"]
        began = time.monotonic()
        assert _poll_delivery(base, vid, fault) == fault
        pytest.FIGURES[f"dev fault {fault}: report applied after"] = (  # type: ignore[attr-defined]
            f"{time.monotonic() - began:.2f} s"
        )
        assert requests.get(base + "/dev/faults", headers=auth, timeout=10).json()["next"] is None
        normal = requests.post(base + "/otp/start", json={"phone": OTHER}, headers=auth, timeout=10)
        # A normal call is picked up and heard: reported completed, as a provider would.
        assert _poll_delivery(base, normal.json()["id"], "completed") == "completed"


def test_a_timeout_fault_leaves_delivery_unknown_and_the_code_valid(dev_api: Api):
    dev_api.request("POST", "/dev/faults", json={"fault": "timeout"})
    started = dev_api.start(PHONE)
    assert started.status_code == 201
    body = started.get_json()
    assert body["delivery"]["status"] == "unknown"
    assert dev_api.check(body["id"], newest_code(dev_api)).get_json()["valid"] is True


def test_an_error_fault_is_a_502_and_no_call(dev_api: Api):
    dev_api.request("POST", "/dev/faults", json={"fault": "error"})
    failed = dev_api.start(PHONE)
    assert failed.status_code == 502
    assert failed.get_json()["code"] == "delivery_failed"
    assert dev_api.request("GET", "/dev/calls").get_json() == {"calls": []}


def test_a_fault_for_a_number_holds_for_every_call_to_it_until_cleared(dev_api: Api):
    set_fault = dev_api.request("POST", "/dev/faults", json={"fault": "error", "phone": PHONE})
    assert set_fault.get_json() == {"next": None, "numbers": 1}
    assert dev_api.start(PHONE).status_code == 502
    assert dev_api.start(PHONE).status_code == 502
    assert dev_api.start(OTHER).status_code == 201
    assert dev_api.request("DELETE", "/dev/faults").status_code == 204
    assert dev_api.request("GET", "/dev/faults").get_json() == {"next": None, "numbers": 0}
    assert dev_api.start(PHONE).status_code == 201


def test_bad_faults_are_named(dev_api: Api):
    response = dev_api.request("POST", "/dev/faults", json={"fault": "fire", "phone": "x"})
    assert response.status_code == 422
    assert set(response.get_json()["errors"]) == {"fault", "phone"}


def test_console_reports_need_the_send_token(dev_app: Flask, dev_api: Api):
    client = dev_app.test_client()
    forged = client.post("/webhooks/console/not-a-token/status", json={"status": "busy"})
    assert forged.status_code == 401


# --- /docs ------------------------------------------------------------------------------------


def test_docs_are_served_in_every_mode_from_the_package(make_app):
    """/docs renders openapi.yaml with Swagger UI files served by otpsvc itself, never a CDN."""
    client = make_app().test_client()
    page = client.get("/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    for asset in re.findall(r'(?:src|href)="(/docs/assets/[^"]+)"', html):
        served_asset = client.get(asset)
        assert served_asset.status_code == 200, asset
        assert served_asset.data, asset
    assert "swagger-ui-bundle.js" in html
    assert client.get("/docs/assets/../../app.py").status_code == 404
    assert client.get("/docs/assets/index.html").status_code == 404


def test_no_page_loads_anything_from_another_site():
    """The dev page, the reference and the insights page work offline: no http(s):// asset in
    their files."""
    static = resources.files("otpsvc").joinpath("dev", "static")
    names = ("dev.html", "dev.js", "dev.css", "docs.html", "docs.js")
    for name in (*names, "base.css", "insights.html", "insights.js", "insights.css"):
        text = static.joinpath(name).read_text(encoding="utf-8")
        assert not re.search(r"""(src|href)\s*=\s*["']https?://""", text), name
        assert "cdn" not in text.lower(), name


def test_an_undelivered_console_report_logs_no_token(make_app, caplog):
    """When the console cannot reach its own webhook, the warning names the failure, not the
    URL: the URL holds the send's callback token."""
    dead = f"http://127.0.0.1:{free_port()}"
    app = make_app(OTPSVC_DEV_MODE="true", OTPSVC_PROVIDERS="console", OTPSVC_PUBLIC_URL=dead)
    api = app.test_client()
    auth = {"Authorization": f"Bearer {KEY_A}"}
    api.post("/dev/faults", json={"fault": "busy"}, headers=auth)
    with caplog.at_level("WARNING", logger="otpsvc"):
        assert api.post("/otp/start", json={"phone": PHONE}, headers=auth).status_code == 201
        deadline = time.monotonic() + 10
        while "report was not delivered" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
    assert "report was not delivered" in caplog.text
    assert "/webhooks/console/" not in caplog.text


def test_the_inbox_numbers_each_send_of_a_verification(dev_api: Api, clock):
    """A resend shows as send 2 in the inbox (it used to say send 1 for every call)."""
    first = dev_api.start(PHONE).get_json()
    clock.advance(31)
    resent = dev_api.start(PHONE)
    assert resent.status_code == 200
    calls = dev_api.request("GET", "/dev/calls", query_string={"phone": PHONE}).get_json()["calls"]
    assert next(c["send"] for c in calls if c["verification_id"] == first["id"]) == 2
