"""Events are part of the change they report: written by the same Lua script, into the event
shard in the verification's own hash slot. A process that dies right after a change cannot lose
its event, and a change that did not happen (a second cancel) writes none."""

from __future__ import annotations

import json

from otpsvc.events import EventWorker
from otpsvc.store.shards import SHARDS, stream_key, tag_of
from tests.conftest import KEY_A, PHONE, Api, wrong_code
from tests.fakes.receiver import Receiver
from tests.fakes.termii import FakeTermii
from tests.test_events import event_env, wait_for


def shard_entries(app, verification_id: str) -> list[dict[str, str]]:  # type: ignore[no-untyped-def]
    runtime = app.extensions["otpsvc"]
    stream = stream_key(runtime.settings.redis_prefix, tag_of(verification_id))
    return [fields for _, fields in runtime.redis.xrange(stream)]


def deliver_all(app) -> None:  # type: ignore[no-untyped-def]
    worker = EventWorker(app.extensions["otpsvc"].events)
    worker.ensure_group()
    while worker.step(block_ms=50):
        worker.drain()
    worker.drain()


def test_an_approval_committed_by_a_process_that_then_died_is_still_told(
    make_app, openapi, termii: FakeTermii, receiver: Receiver, clock
):
    """The store's approve is the last thing the process did (it died before anything else):
    the approval's event was written with it, and a worker delivers it."""
    app = make_app(**event_env(a=receiver))
    api = Api(app, KEY_A, openapi)
    vid = api.start().get_json()["id"]
    store = app.extensions["otpsvc"].store
    ticket = store.begin_check(
        vid, client="client-a", now_ms=int(clock() * 1000), max_attempts=5, code_length=6
    )
    assert store.approve(vid, gen=ticket.gen, now_ms=int(clock() * 1000)) == "approved"
    deliver_all(app)
    [event] = receiver.events()
    assert event["type"] == "verification.approved"
    assert event["data"]["id"] == vid
    assert event["data"]["status"] == "approved"


def test_a_second_cancel_changes_nothing_and_tells_nothing(
    make_app, openapi, termii: FakeTermii, receiver: Receiver
):
    app = make_app(**event_env(a=receiver))
    api = Api(app, KEY_A, openapi)
    vid = api.start().get_json()["id"]
    assert api.cancel(vid).status_code == 200
    assert api.cancel(vid).status_code == 200
    assert [e["type"] for e in shard_entries(app, vid)] == ["verification.canceled"]
    deliver_all(app)
    assert [e["type"] for e in receiver.events()] == ["verification.canceled"]


def test_the_event_holds_no_code_verifier_full_number_or_code(
    make_app, openapi, termii: FakeTermii, receiver: Receiver
):
    app = make_app(**event_env(a=receiver))
    api = Api(app, KEY_A, openapi)
    vid = api.start().get_json()["id"]
    code = termii.last_code()
    api.check(vid, wrong_code(code))
    api.cancel(vid)
    [entry] = shard_entries(app, vid)
    snapshot = json.loads(entry["rec"])
    assert "h" not in snapshot
    assert snapshot["pm"] != PHONE
    stored = json.dumps(entry)
    assert PHONE not in stored
    assert "argon2" not in stored


def test_a_client_without_a_webhook_writes_no_events(
    make_app, openapi, termii: FakeTermii, receiver: Receiver
):
    """client-a has a webhook, client-b has none: b's changes write nothing to any stream."""
    from tests.conftest import KEY_B

    app = make_app(**event_env(a=receiver))
    b = Api(app, KEY_B, openapi)
    vid = b.start().get_json()["id"]
    b.cancel(vid)
    assert shard_entries(app, vid) == []
    assert app.extensions["otpsvc"].events.backlog(0)[0] == 0


def test_a_lockout_whose_check_died_before_counting_is_told_when_it_expires(
    make_app, openapi, termii: FakeTermii, receiver: Receiver, clock
):
    """The last attempt was taken (begin_check) and the process died before the wrong code was
    counted: the verification is locked with no event yet. When it expires, the worker tells
    verification.max_attempts_reached, not verification.expired, and only once."""
    app = make_app(**event_env(a=receiver), OTPSVC_MAX_CHECK_ATTEMPTS="2")
    api = Api(app, KEY_A, openapi)
    vid = api.start().get_json()["id"]
    api.check(vid, wrong_code(termii.last_code()))
    store = app.extensions["otpsvc"].store
    ticket = store.begin_check(
        vid, client="client-a", now_ms=int(clock() * 1000), max_attempts=2, code_length=6
    )
    assert ticket.outcome == "verify"
    assert shard_entries(app, vid) == []
    events = app.extensions["otpsvc"].events
    assert events.expire_due(clock() + 301) == 1
    assert events.expire_due(clock() + 302) == 0
    deliver_all(app)
    [event] = receiver.events()
    assert event["type"] == "verification.max_attempts_reached"
    assert event["data"]["status"] == "max_attempts_reached"
    assert event["data"]["attempts_remaining"] == 0


def test_a_lockout_is_told_once_at_the_check_and_not_again_at_expiry(
    make_app, openapi, termii: FakeTermii, receiver: Receiver, clock
):
    app = make_app(**event_env(a=receiver), OTPSVC_MAX_CHECK_ATTEMPTS="2")
    api = Api(app, KEY_A, openapi)
    vid = api.start().get_json()["id"]
    for _ in range(2):
        api.check(vid, wrong_code(termii.last_code()))
    assert [e["type"] for e in shard_entries(app, vid)] == ["verification.max_attempts_reached"]
    assert app.extensions["otpsvc"].events.expire_due(clock() + 301) == 0


def test_a_resend_pushes_the_expiry_event_back(
    make_app, openapi, termii: FakeTermii, receiver: Receiver, clock
):
    app = make_app(**event_env(a=receiver), OTPSVC_RESEND_COOLDOWN="30")
    api = Api(app, KEY_A, openapi)
    vid = api.start().get_json()["id"]
    clock.advance(200)
    assert api.start().get_json()["id"] == vid  # the resend: expires 300 s from now
    events = app.extensions["otpsvc"].events
    assert events.expire_due(clock() + 150) == 0
    assert events.expire_due(clock() + 301) == 1
    deliver_all(app)
    [event] = receiver.events()
    assert event["type"] == "verification.expired"
    assert event["data"]["sends"] == 2


def test_every_shard_is_read(make_app, openapi, termii: FakeTermii, receiver: Receiver):
    """Numbers spread over the shards; a worker delivers from each of them."""
    app = make_app(**event_env(a=receiver))
    api = Api(app, KEY_A, openapi)
    ids = [api.start(f"+23480312{i:05d}").get_json()["id"] for i in range(40)]
    for vid in ids:
        api.cancel(vid)
    assert len({tag_of(vid) for vid in ids}) > 20
    assert all(int(tag_of(vid), 16) < SHARDS for vid in ids)
    deliver_all(app)
    wait_for(lambda: len(receiver.events()) == 40)
    assert {e["data"]["id"] for e in receiver.events()} == set(ids)
