"""Match mode: the start answers two digits the app shows; the call asks the person to key them.

Driven through the dev page's keypad, which presses keys through the send's own callback token
as a provider's callback would, on the real Redis scripts."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import redis
import requests
from flask import Flask

from otpsvc.core.codes import match_digits
from otpsvc.core.ladder import LadderRunner
from otpsvc.voice.templates import Spoken, render_text
from tests.conftest import KEY_A, PHONE, Api
from tests.test_dev_page import _poll_delivery, page_post, served, snapshot
from tests.test_events import event_env, wait_for

MATCH = re.compile(r"\A(0[1-9]|[1-8][0-9])\Z")


def other_digits(digits: str) -> str:
    return "12" if digits != "12" else "34"


def press(app: Flask, vid: str, key: str) -> str:
    answer = page_post(app, "/dev/page/press", {"id": vid, "key": key})
    assert answer.status_code == 200, answer.get_json()
    return str(answer.get_json()["result"])


def metric(app: Flask, answer: str) -> float:
    return counted(app.test_client().get("/metrics").get_data(as_text=True), answer)


def counted(metrics: str, answer: str) -> float:
    """otpsvc_keypad_answers_total for client-a's match calls with ``answer``."""
    pattern = (
        r'^otpsvc_keypad_answers_total\{answer="(?P<answer>[a-z_]+)",client="client-a",'
        r'mode="match"\} (?P<value>\S+)$'
    )
    return sum(
        float(m["value"])
        for m in re.finditer(pattern, metrics, re.MULTILINE)
        if m["answer"] == answer
    )


def test_the_digits_are_two_never_00_never_9_first_and_all_come_up():
    seen = {match_digits() for _ in range(3000)}
    assert all(MATCH.match(d) for d in seen)
    assert len(seen) == 89  # 01..89: every one is drawn


def test_a_match_start_returns_two_digits_the_call_never_says(dev_app: Flask, dev_api: Api):
    started = dev_api.start(mode="match", locale="en")
    assert started.status_code == 201
    body = started.get_json()
    assert MATCH.match(body["match"])
    assert body["mode"] == "match"
    assert body["answer"] is None
    call = snapshot(dev_app)["calls"][0]
    assert call["mode"] == "match"
    # The inbox shows the digits expected; the call asks for them and never says them.
    assert call["match"] == body["match"]
    assert call["code"] == ""
    assert call["text"] == render_text(Spoken("match", "en", "otpsvc", 5), "")
    assert "two digits shown on your screen" in call["text"]
    # GET never shows the digits again.
    assert "match" not in dev_api.get(body["id"]).get_json()


def test_keying_the_digits_shown_approves(dev_app: Flask, dev_api: Api):
    body = dev_api.start(mode="match").get_json()
    before = metric(dev_app, "matched")
    assert press(dev_app, body["id"], body["match"]) == "approved"
    shown = dev_api.get(body["id"]).get_json()
    assert (shown["status"], shown["answer"]) == ("approved", "matched")
    assert snapshot(dev_app)["calls"][0]["pressed"] == f"{body['match']}: approved"
    assert metric(dev_app, "matched") == before + 1


def test_other_digits_use_an_attempt_and_the_call_then_takes_no_more(
    dev_app: Flask, dev_api: Api, clock
):
    body = dev_api.start(mode="match").get_json()
    vid, before = body["id"], body["attempts_remaining"]
    wrong_before = metric(dev_app, "wrong_digits")
    assert press(dev_app, vid, other_digits(body["match"])) == "wrong"
    shown = dev_api.get(vid).get_json()
    assert shown["status"] == "pending"
    assert shown["answer"] == "wrong_digits"
    assert shown["attempts_remaining"] == before - 1
    assert metric(dev_app, "wrong_digits") == wrong_before + 1
    # One guess per call: the right digits on the same call change nothing now.
    assert press(dev_app, vid, body["match"]) == "ignored"
    assert dev_api.get(vid).get_json()["status"] == "pending"
    # A resend calls again with new digits for the screen; they approve.
    clock.advance(31)
    again = dev_api.start(mode="match").get_json()
    assert again["id"] == vid
    assert again["sends"] == 2
    assert MATCH.match(again["match"])
    assert snapshot(dev_app)["calls"][0]["match"] == again["match"]
    assert press(dev_app, vid, again["match"]) == "approved"
    assert dev_api.get(vid).get_json()["answer"] == "matched"


def test_wrong_digits_count_against_the_attempts_until_locked(
    make_app: Callable[..., Flask], openapi, clock
):
    app = make_app(
        OTPSVC_DEV_MODE="true", OTPSVC_PROVIDERS="console", OTPSVC_MAX_CHECK_ATTEMPTS="2"
    )
    api = Api(app, KEY_A, openapi)
    first = api.start(mode="match").get_json()
    assert press(app, first["id"], other_digits(first["match"])) == "wrong"
    clock.advance(31)
    second = api.start(mode="match").get_json()
    assert press(app, first["id"], other_digits(second["match"])) == "wrong"
    assert api.get(first["id"]).get_json()["status"] == "max_attempts_reached"
    # Locked: neither a resend nor the right digits open it again.
    clock.advance(120)
    assert api.start(mode="match").status_code == 429


def test_9_denies_and_blocks_the_number(dev_app: Flask, dev_api: Api):
    body = dev_api.start(mode="match").get_json()
    assert press(dev_app, body["id"], "9") == "denied"
    shown = dev_api.get(body["id"]).get_json()
    assert (shown["status"], shown["answer"]) == ("denied", "denied")
    assert dev_api.start(mode="match").status_code == 429


def test_a_match_verification_has_no_code_to_check(dev_api: Api):
    body = dev_api.start(mode="match").get_json()
    assert dev_api.check(body["id"], "1234").status_code == 404
    assert dev_api.get(body["id"]).get_json()["attempts_remaining"] == body["attempts_remaining"]


def test_a_single_digit_other_than_9_is_not_an_answer(dev_app: Flask, dev_api: Api):
    body = dev_api.start(mode="match").get_json()
    assert press(dev_app, body["id"], "1") == "ignored"
    shown = dev_api.get(body["id"]).get_json()
    assert (shown["status"], shown["answer"]) == ("pending", None)


def test_the_digits_are_stored_only_as_a_keyed_hash(dev_app: Flask, dev_api: Api, redis_url):
    """The record holds the argon2 hash; an idempotent replay gives the same digits back from a
    sealed copy, and no Redis value holds them in the clear next to the verification's id."""
    headers = {"Idempotency-Key": "match-1"}
    first = dev_api.request(
        "POST", "/otp/start", json={"phone": PHONE, "mode": "match"}, headers=headers
    )
    replay = dev_api.request(
        "POST", "/otp/start", json={"phone": PHONE, "mode": "match"}, headers=headers
    )
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.get_json()["match"] == first.get_json()["match"]
    digits = first.get_json()["match"]
    store = redis.Redis.from_url(redis_url)
    kept = 0
    for key in store.scan_iter(count=1000):
        if b":{dev}:" in key:
            continue  # the dev inbox: dev mode only, and it shows codes too
        kind = store.type(key)
        values: list[bytes] = []
        if kind == b"string":
            values = [store.get(key) or b""]
        elif kind == b"hash":
            values = list(store.hgetall(key).values())
        for value in values:
            text = value.decode(errors="replace").replace(" ", "")
            kept += '"mode":"match"' in text
            assert f'"match":"{digits}"' not in text, key
    assert kept  # the idempotent answer was looked at
    vid = first.get_json()["id"].encode()
    record = next(store.hgetall(k) for k in store.scan_iter(count=1000) if k.endswith(vid))
    assert record[b"m"] == b"n"
    assert record[b"h"].startswith(b"m=")


def test_a_route_that_cannot_collect_two_digits_refuses_match_with_422(make_app, openapi):
    for providers in ("termii", "sevenio", "cequens", "alphasms"):
        app = make_app(OTPSVC_PROVIDERS=providers, OTPSVC_ALLOWED_COUNTRIES="EG")
        refused = Api(app, KEY_A, openapi).start("+201001234567", mode="match")
        assert refused.status_code == 422, providers
        assert "two keys" in refused.get_json()["errors"]["mode"][0]


def test_a_client_may_be_kept_from_match_mode(make_app, openapi, tmp_path):
    clients = tmp_path / "clients.toml"
    clients.write_text('[clients.client-a]\nmodes = ["code"]\n')
    app = make_app(
        OTPSVC_DEV_MODE="true", OTPSVC_PROVIDERS="console", OTPSVC_CLIENTS_FILE=str(clients)
    )
    refused = Api(app, KEY_A, openapi).start(mode="match")
    assert refused.status_code == 422
    assert refused.get_json()["errors"]["mode"] == ["this client's verifications are code"]


def test_a_client_template_speaks_the_match_call(make_app, openapi, tmp_path):
    clients = tmp_path / "clients.toml"
    clients.write_text(
        "[clients.client-a.templates.en]\n"
        'match = "Signing in to {brand}? Key the two digits on your screen, or 9 if not you."\n'
    )
    app = make_app(
        OTPSVC_DEV_MODE="true", OTPSVC_PROVIDERS="console", OTPSVC_CLIENTS_FILE=str(clients)
    )
    Api(app, KEY_A, openapi).start(mode="match", locale="en")
    call = snapshot(app)["calls"][0]
    assert call["template"] == "clients.client-a"
    assert call["text"].startswith("Signing in to otpsvc? Key the two digits")


def test_a_match_template_may_not_read_a_code(make_app, tmp_path):
    clients = tmp_path / "clients.toml"
    clients.write_text('[clients.client-a.templates.en]\nmatch = "Your code is {code}."\n')
    with pytest.raises(Exception, match=r"match: has an unknown placeholder \{code\}"):
        make_app(
            OTPSVC_DEV_MODE="true", OTPSVC_PROVIDERS="console", OTPSVC_CLIENTS_FILE=str(clients)
        )


def test_a_ladders_later_call_asks_for_the_digits_already_shown(
    make_app: Callable[..., Flask], openapi, clock
):
    """The app learned the digits from the start; the worker's next call cannot tell it new
    ones, so that call asks for the same digits (reserve keeps their hash) and they approve."""
    app = make_app(
        OTPSVC_DEV_MODE="true",
        OTPSVC_PROVIDERS="console",
        OTPSVC_LADDER="voice:console/30,voice:console",
    )
    api = Api(app, KEY_A, openapi)
    body = api.start(mode="match").get_json()
    clock.advance(31)
    ladder = LadderRunner(app.extensions["otpsvc"].service)
    assert ladder.run_due() == 1
    ladder.drain()
    shown = api.get(body["id"]).get_json()
    assert shown["sends"] == 2
    assert len(shown["ladder"]["steps"]) == 2
    later = snapshot(app)["calls"][0]
    assert (later["send"], later["mode"], later["match"]) == (2, "match", "")
    assert press(app, body["id"], body["match"]) == "approved"
    assert api.get(body["id"]).get_json()["answer"] == "matched"


def test_events_say_match_and_how_each_call_was_answered(
    make_app: Callable[..., Flask], openapi, receiver, worker_for, clock
):
    """The receiver validates each event against the contract; approved says matched, denied
    says denied, and the expired one whose call was keyed wrong says wrong_digits."""
    app = make_app(OTPSVC_DEV_MODE="true", OTPSVC_PROVIDERS="console", **event_env(a=receiver))
    api = Api(app, KEY_A, openapi)
    matched = api.start(PHONE, mode="match").get_json()
    press(app, matched["id"], matched["match"])
    denied = api.start("+2348031234599", mode="match").get_json()
    press(app, denied["id"], "9")
    wrong = api.start("+2348031234588", mode="match").get_json()
    press(app, wrong["id"], other_digits(wrong["match"]))
    assert app.extensions["otpsvc"].events.expire_due(clock() + 301) == 1
    worker_for(app)
    wait_for(lambda: len(receiver.events()) >= 3)
    seen = {e["data"]["id"]: e for e in receiver.events()}
    assert (seen[matched["id"]]["type"], seen[matched["id"]]["data"]["answer"]) == (
        "verification.approved",
        "matched",
    )
    assert seen[denied["id"]]["data"]["answer"] == "denied"
    assert (seen[wrong["id"]]["type"], seen[wrong["id"]]["data"]["answer"]) == (
        "verification.expired",
        "wrong_digits",
    )
    assert all(e["data"]["mode"] == "match" for e in seen.values())
    assert all("match" not in e["data"] for e in seen.values())


def test_a_match_call_nobody_answered_says_no_answer(make_app: Callable[..., Flask]):
    """The console's no-answer report arrives through its webhook, as a provider's would."""
    auth = {"Authorization": f"Bearer {KEY_A}"}
    with served(make_app) as base:
        before = counted(requests.get(base + "/metrics", timeout=10).text, "no_answer")
        requests.post(base + "/dev/faults", json={"fault": "no-answer"}, headers=auth, timeout=10)
        started = requests.post(
            base + "/otp/start", json={"phone": PHONE, "mode": "match"}, headers=auth, timeout=10
        ).json()
        assert _poll_delivery(base, started["id"], "no-answer") == "no-answer"
        shown = requests.get(base + f"/otp/{started['id']}", headers=auth, timeout=10).json()
        assert (shown["status"], shown["answer"]) == ("pending", "no_answer")
        after = counted(requests.get(base + "/metrics", timeout=10).text, "no_answer")
        assert after == before + 1
