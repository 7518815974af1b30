"""``otpsvc migrate-keys``: what otpsvc 0.1 stored under four-hex-digit hash tags (a pending
verification and its expiry watch, a deny block, failure caps) is found again after the move."""

from __future__ import annotations

import json
import re

from click.testing import CliRunner

from otpsvc.cli import main
from otpsvc.store.shards import expiring_key, snapshots_key, tags
from tests.conftest import KEY_A, PHONE, Api, fake_termii_env, wrong_code
from tests.fakes.receiver import Receiver
from tests.fakes.termii import FakeTermii
from tests.test_event_shards import deliver_all
from tests.test_events import event_env

PREFIX = "otpsvc"


def back_to_the_old_layout(r) -> int:  # type: ignore[no-untyped-def]
    """Rewrite the current layout as otpsvc 0.1 wrote it: each per-number key under the first
    four hex digits of its number's hash, the expiry watch in one sorted set and one hash."""
    renamed = 0
    for key in list(r.scan_iter(match=f"{PREFIX}:{{??}}:*")):
        rest = re.fullmatch(r"[^:]+:\{..\}:(.+)", key)[1]  # type: ignore[index]
        if rest in ("ev", "ex", "es", "in"):
            continue
        r.rename(key, f"{PREFIX}:{{{rest.rsplit(':', 1)[1][:4]}}}:{rest}")
        renamed += 1
    for tag in tags():
        for vid, expires in r.zrange(expiring_key(PREFIX, tag), 0, -1, withscores=True):
            r.zadd(f"{PREFIX}:{{{PREFIX}:events}}:expiring", {vid: int(expires)})
            r.hset(f"{PREFIX}:{{{PREFIX}:events}}:pending", vid, json.dumps({"view": {}}))
        r.delete(expiring_key(PREFIX, tag), snapshots_key(PREFIX, tag))
    return renamed


def test_what_0_1_stored_is_found_again_after_migrate_keys(
    make_app, openapi, termii: FakeTermii, receiver: Receiver, redis_url, redis_client, clock
):
    app = make_app(**event_env(a=receiver), OTPSVC_MAX_CHECK_ATTEMPTS="2")
    api = Api(app, KEY_A, openapi)
    pending = api.start().get_json()["id"]
    other = "+2348031234500"
    locked = api.start(other).get_json()["id"]
    for _ in range(2):
        api.check(locked, wrong_code(termii.code_for(other)))
    deliver_all(app)  # the lock-out's event
    keyring = app.extensions["otpsvc"].service.keyring
    store = app.extensions["otpsvc"].store
    blocked = "+2348031234511"
    redis_client.set(store.deny_key("client-a", keyring.phone_key(blocked)), 1, px=600_000)

    assert back_to_the_old_layout(redis_client) >= 6
    assert api.get(pending).status_code == 404

    env = {**fake_termii_env(redis_url, termii), **event_env(a=receiver)}
    result = CliRunner().invoke(main, ["migrate-keys"], env=env)
    assert result.exit_code == 0, result.output
    assert "1 pending verifications watched" in result.output

    assert api.get(pending).get_json()["status"] == "pending"
    assert api.get(locked).get_json()["status"] == "max_attempts_reached"
    refused = api.start(blocked)
    assert refused.status_code == 429, refused.get_json()
    assert refused.get_json()["code"] == "number_blocked"
    clock.advance(31)  # past the resend cooldown
    assert api.start(PHONE).get_json()["id"] == pending  # the same verification, resent

    again = CliRunner().invoke(main, ["migrate-keys"], env=env)
    assert "moved 0 keys" in again.output

    events = app.extensions["otpsvc"].events
    assert events.expire_due(clock() + 301) == 1
    deliver_all(app)
    told = [(e["type"], e["data"]["id"]) for e in receiver.events()]
    assert ("verification.expired", pending) in told


def test_counts_both_layouts_hold_are_merged_not_dropped(
    make_app, openapi, termii: FakeTermii, redis_url, redis_client
):
    """Where a process of the new version already counted under the new key (failed checks,
    "not me" denials), migrate-keys adds what 0.1 counted instead of dropping it."""
    app = make_app()
    keyring = app.extensions["otpsvc"].service.keyring
    store = app.extensions["otpsvc"].store
    key = keyring.phone_key(PHONE)
    failures, denials = store.failure_key("client-a", key), store.denials_key(key)
    redis_client.set(failures, 3, px=80_000_000)
    redis_client.zadd(denials, {"client-a": 1000})
    assert back_to_the_old_layout(redis_client) == 2
    # The new version wrote meanwhile.
    redis_client.set(failures, 4, px=60_000_000)
    redis_client.zadd(denials, {"client-b": 2000})
    env = fake_termii_env(redis_url, termii)
    result = CliRunner().invoke(main, ["migrate-keys"], env=env)
    assert result.exit_code == 0, result.output
    assert "2 merged" in result.output
    assert redis_client.get(failures) == "7"
    assert redis_client.pttl(failures) > 70_000_000
    assert dict(redis_client.zrange(denials, 0, -1, withscores=True)) == {
        "client-a": 1000,
        "client-b": 2000,
    }
