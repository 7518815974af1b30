"""The conversion rule: sends to a destination whose codes are not entered are suspended (in
enforce mode) or reported (in monitor mode), per client and for every client; the operators'
status, lift and safe list; a ladder step into a suspended prefix; and the pumping simulation
of bench/pumping.py, on voice and on SMS."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from click.testing import CliRunner
from prometheus_client import REGISTRY

from bench.pumping import Sim, Traffic, run
from otpsvc.cli import main
from otpsvc.config.model import Settings
from otpsvc.core.ladder import LadderRunner
from otpsvc.events.queue import render
from tests.conftest import KEY_A, KEY_B, Api, FakeClock, termii_env
from tests.fakes.termii import FakeTermii
from tests.test_ladder import events_of

PUMPED = "+2348031234{:03d}"
CONVERTING = "+2347031234{:03d}"


def fold(app: Any) -> None:
    app.extensions["otpsvc"].rollups.fold()


def would_block(rule: str = "prefix", channel: str = "voice") -> float:
    value = REGISTRY.get_sample_value(
        "otpsvc_fraud_would_block_total", {"rule": rule, "channel": channel}
    )
    return value or 0.0


def pump(api: Api, count: int, pattern: str = PUMPED, first: int = 0) -> None:
    for i in range(first, first + count):
        started = api.start(pattern.format(i))
        assert started.status_code == 201, started.get_json()


def convert(api: Api, termii: FakeTermii, count: int, pattern: str = CONVERTING) -> None:
    for i in range(count):
        number = pattern.format(i)
        vid = api.start(number).get_json()["id"]
        assert api.check(vid, termii.code_for(number)).get_json()["valid"] is True


def test_enforce_suspends_a_prefix_whose_codes_are_never_entered(
    make_app, openapi, termii: FakeTermii, clock: FakeClock
):
    """The issue's measure: enforce, a grace of 5 s, the other defaults: 25 starts to one prefix
    whose codes are never entered, then a start there is refused with 429 prefix_suspended and
    a Retry-After, while a prefix whose codes are entered keeps working."""
    app = make_app(OTPSVC_FRAUD_MODE="enforce", OTPSVC_FRAUD_GRACE="5")
    api = Api(app, KEY_A, openapi)
    convert(api, termii, 10)
    pump(api, 25)
    fold(app)
    # Within the grace nothing is judged yet.
    assert api.start(PUMPED.format(100)).status_code == 201
    clock.advance(8)
    fold(app)
    calls = len(termii.calls)
    refused = api.start(PUMPED.format(101))
    body = refused.get_json()
    assert refused.status_code == 429, body
    assert body["code"] == "prefix_suspended"
    assert (body["rule"], body["channel"], body["scope"]) == ("prefix", "voice", "client")
    assert 890 <= int(refused.headers["Retry-After"]) <= 900  # the first suspension: 15 min
    assert "were entered" in body["detail"]
    assert len(termii.calls) == calls  # nothing placed
    # The converting prefix, and the country as a whole (10 of 36 entered), go on.
    assert api.start(CONVERTING.format(500)).status_code == 201
    # The other client never sent there: its sends go on.
    assert Api(app, KEY_B, openapi).start(PUMPED.format(102)).status_code == 201
    # The suspension lifts on its own.
    clock.advance(901)
    assert api.start(PUMPED.format(103)).status_code == 201


def test_monitor_places_the_send_and_reports_what_it_would_have_refused(
    make_app, openapi, termii: FakeTermii, clock: FakeClock
):
    app = make_app(
        OTPSVC_FRAUD_GRACE="5",
        OTPSVC_EVENT_WEBHOOKS="client-a=https://app.example.com/hooks",
        OTPSVC_EVENT_WEBHOOK_SECRETS="client-a=whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY",
    )
    api = Api(app, KEY_A, openapi)
    pump(api, 25)
    fold(app)
    clock.advance(8)
    fold(app)
    before = would_block()
    started = api.start(PUMPED.format(200))
    assert started.status_code == 201
    assert would_block() == before + 1
    [event] = [
        e for e in events_of(app, started.get_json()["id"]) if e["type"] == "fraud.would_block"
    ]
    _, kind, body, _ = render(event, 5)
    assert kind == "fraud.would_block"
    assert json.loads(body)["data"]["status"] == "pending"
    assert json.loads(body)["data"]["fraud"] == {
        "rule": "prefix",
        "channel": "voice",
        "destination": "+234803",
    }
    # The decision is the same one enforce takes: the suspension is on record.
    status = CliRunner().invoke(main, ["fraud", "status", "--json"], env=_env(app))
    assert status.exit_code == 0, status.output
    # Every send of this client to Nigeria went to that prefix: the country too.
    shown = {s["rule"]: s for s in json.loads(status.output)}
    assert set(shown) == {"prefix", "country"}
    assert (shown["prefix"]["destination"], shown["prefix"]["client"]) == ("+234803", "client-a")
    assert (shown["prefix"]["sends"], shown["prefix"]["approved"]) == (25, 0)
    assert shown["country"]["destination"] == "NG"


def test_a_client_set_to_enforce_while_everyone_monitors(
    make_app, openapi, termii: FakeTermii, clock: FakeClock, tmp_path
):
    path = tmp_path / "clients.toml"
    path.write_text('[clients.client-b]\nfraud_mode = "enforce"\n')
    app = make_app(OTPSVC_FRAUD_GRACE="5", OTPSVC_CLIENTS_FILE=str(path))
    a, b = Api(app, KEY_A, openapi), Api(app, KEY_B, openapi)
    pump(a, 12)
    pump(b, 12, first=50)
    clock.advance(8)
    fold(app)
    # Seen across both clients (24 sends, none entered): suspended for every client. The
    # monitoring client's sends are placed, the enforcing client's refused.
    assert a.start(PUMPED.format(300)).status_code == 201
    refused = b.start(PUMPED.format(301)).get_json()
    assert (refused["code"], refused["rule"], refused["scope"]) == (
        "prefix_suspended",
        "prefix_all",
        "global",
    )


def test_one_clients_pumping_does_not_cost_another_its_sends(
    make_app, openapi, termii: FakeTermii, clock: FakeClock
):
    """Client A pumps a prefix where client B's people enter their codes: A is suspended there,
    B is not; and with the prefix seen converting badly by no other client, there is no
    suspension for everyone."""
    app = make_app(OTPSVC_FRAUD_MODE="enforce", OTPSVC_FRAUD_GRACE="5")
    a, b = Api(app, KEY_A, openapi), Api(app, KEY_B, openapi)
    convert(b, termii, 6, pattern=PUMPED.replace("1234", "5555"))
    pump(a, 30)
    clock.advance(8)
    fold(app)
    assert a.start(PUMPED.format(400)).get_json()["code"] == "prefix_suspended"
    assert b.start(PUMPED.format(401)).status_code == 201


def test_operators_list_and_lift_suspensions_and_keep_a_safe_list(
    make_app, openapi, termii: FakeTermii, clock: FakeClock, caplog
):
    app = make_app(OTPSVC_FRAUD_MODE="enforce", OTPSVC_FRAUD_GRACE="5")
    api = Api(app, KEY_A, openapi)
    convert(api, termii, 10)
    pump(api, 20)
    clock.advance(8)
    fold(app)
    env = _env(app)
    status = CliRunner().invoke(main, ["fraud", "status"], env=env)
    assert status.exit_code == 0, status.output
    assert "+234803" in status.output
    assert "0 of 20" in status.output
    # A number on the safe list is never refused by the rule.
    safe = PUMPED.format(600)
    added = CliRunner().invoke(main, ["fraud", "safe", "add", safe, "--days", "30"], env=env)
    assert added.exit_code == 0, added.output
    assert api.start(safe).status_code == 201
    assert api.start(PUMPED.format(601)).status_code == 429
    # The safe list holds no number: only its keyed hash.
    redis = app.extensions["otpsvc"].redis
    assert not any("803123460" in k or "8031234600" in k for k in redis.keys("*fraud*"))
    lifted = CliRunner().invoke(main, ["fraud", "lift", "+234803"], env=env)
    assert lifted.exit_code == 0, lifted.output
    assert "lifted 1" in lifted.output
    assert api.start(PUMPED.format(602)).status_code == 201
    # Judged afresh: one more send not entered does not bring the suspension back.
    clock.advance(8)
    fold(app)
    assert api.start(PUMPED.format(603)).status_code == 201
    assert json.loads(CliRunner().invoke(main, ["fraud", "status", "--json"], env=env).output) == []
    nothing = CliRunner().invoke(main, ["fraud", "lift", "+234999"], env=env)
    assert nothing.exit_code == 1


def test_a_ladder_step_into_a_suspended_prefix_stops_the_ladder(
    make_app, openapi, termii: FakeTermii, clock: FakeClock
):
    """SMS to the prefix is suspended (its codes never entered); a ladder's voice call there
    goes out, and its SMS step is not sent: the ladder stops, saying why."""
    app = make_app(
        OTPSVC_FRAUD_MODE="enforce",
        OTPSVC_FRAUD_GRACE="5",
        OTPSVC_LADDER="voice:termii/30,sms:termii",
        OTPSVC_TERMII_SENDER="Acme",
    )
    sms_first = make_app(
        OTPSVC_FRAUD_MODE="enforce",
        OTPSVC_FRAUD_GRACE="5",
        OTPSVC_LADDER="sms:termii/250,voice:termii",
        OTPSVC_TERMII_SENDER="Acme",
    )
    pump(Api(sms_first, KEY_A, openapi), 20)
    assert len(termii.messages) == 20
    clock.advance(8)
    fold(sms_first)
    api = Api(app, KEY_A, openapi)
    started = api.start(PUMPED.format(700)).get_json()
    assert started["provider"] == "termii"  # the call: voice is not suspended
    clock.advance(31)
    runner = LadderRunner(app.extensions["otpsvc"].service)
    runner.run_due()
    runner.drain()
    assert len(termii.messages) == 20
    view = api.get(started["id"]).get_json()
    assert view["status"] == "pending"
    [stopped] = [
        e for e in events_of(app, started["id"]) if e["type"] == "verification.escalation_stopped"
    ] or [None]
    assert view["ladder"]["stopped"] == "prefix_suspended", view["ladder"]
    assert stopped is None  # no webhook configured: no event written


def _env(app: Any) -> dict[str, str]:
    """The environment the CLI reads: the app's own Redis and rule."""
    settings = app.extensions["otpsvc"].settings
    return termii_env(settings.redis_url, OTPSVC_FRAUD_GRACE=str(settings.fraud_grace))


# The simulation ------------------------------------------------------------------------------

SHIPPED = {
    # The volume limits the attack stays under, as shipped.
    "OTPSVC_VELOCITY_PREFIX": Settings.velocity_prefix,
    "OTPSVC_VELOCITY_PHONE": Settings.velocity_phone,
    "OTPSVC_VELOCITY_COUNTRY": Settings.velocity_country,
    "OTPSVC_VELOCITY_CLIENT": Settings.velocity_client,
}


def sms_code(termii: FakeTermii, number: str) -> str:
    [last] = [m for m in termii.messages if m.json["to"] == number.lstrip("+")][-1:]
    found = re.search(r"\d{6}", last.json["sms"])
    assert found
    return found.group(0)


def simulate(make_app, termii, clock, channel: str, mode: str, **traffic: Any):  # type: ignore[no-untyped-def]
    ladder = {"OTPSVC_LADDER": "sms:termii/250,voice:termii", "OTPSVC_TERMII_SENDER": "Acme"}
    app = make_app(OTPSVC_FRAUD_MODE=mode, **SHIPPED, **(ladder if channel == "sms" else {}))
    code_of = (lambda n: sms_code(termii, n)) if channel == "sms" else termii.code_for
    sim = Sim(app.test_client(), clock.advance, code_of, lambda: fold(app), KEY_A)
    return app, run(sim, Traffic(**traffic))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("channel", ["voice", "sms"])
def test_pumping_is_suspended_within_a_few_sends_and_no_legitimate_prefix_ever(
    make_app, termii: FakeTermii, clock: FakeClock, channel: str
):
    app, outcome = simulate(make_app, termii, clock, channel, "enforce", hours=2.5)
    assert outcome.attack_refused > 0
    # 20 sends settle, and those placed during the last one's grace (40 an hour: about 2).
    assert outcome.placed_before_refusal is not None
    assert outcome.placed_before_refusal <= 20 + 4
    # After the first suspension lifts, the first send that settles brings the next, longer.
    assert outcome.attack_placed <= outcome.placed_before_refusal + 6
    assert outcome.legit_refused == 0
    assert outcome.codes == {"prefix_suspended"}
    conversion = app.extensions["otpsvc"].service.conversion
    judged = conversion.suspensions(int(clock() * 1000), active=False)
    assert {(s.destination, s.channel) for s in judged} == {("+234803", channel)}
    # 15 min, then 1 h, then 12 h: by now the longest.
    assert [(s.rule, s.level) for s in judged] == [("prefix", 3)]


@pytest.mark.timeout(300)
def test_in_monitor_mode_the_same_decisions_are_reported_and_nothing_is_refused(
    make_app, termii: FakeTermii, clock: FakeClock
):
    before = would_block("prefix", "voice")
    app, outcome = simulate(make_app, termii, clock, "voice", "monitor", hours=1.5)
    assert outcome.attack_refused == outcome.legit_refused == 0
    assert outcome.attack_placed == outcome.attack_starts
    assert would_block("prefix", "voice") - before >= outcome.attack_starts - 24
    conversion = app.extensions["otpsvc"].service.conversion
    judged = conversion.suspensions(int(clock() * 1000), active=False)
    assert {(s.destination, s.rule) for s in judged} == {("+234803", "prefix")}


@pytest.mark.timeout(300)
def test_an_attack_through_one_client_leaves_the_other_clients_sends_alone(
    make_app, termii: FakeTermii, clock: FakeClock
):
    """The attack comes through client B while client A's people use the same prefix and
    enter their codes: B is suspended, A never refused."""
    traffic = {"legit_prefixes": ("+234803", "+234703"), "attack_key": KEY_B, "hours": 1.5}
    _app, outcome = simulate(make_app, termii, clock, "voice", "enforce", **traffic)
    assert outcome.attack_refused > 0
    assert outcome.legit_refused == 0


def test_the_suspensions_an_api_key_sees(make_app, openapi, termii: FakeTermii, clock: FakeClock):
    """An operator sees every suspension, with the clients exempt; a client sees those that
    apply to it, naming no other client; another client none of them."""
    app = make_app(
        OTPSVC_FRAUD_GRACE="5",
        OTPSVC_OPERATOR_KEYS="ops:op-" + "k3Yq9ZxV7mW2pL5nR8tB4cF6hJ1dG0sA",
    )
    a, b = Api(app, KEY_A, openapi), Api(app, KEY_B, openapi)
    convert(b, termii, 10)
    pump(a, 20)
    clock.advance(8)
    fold(app)
    operator = {"Authorization": "Bearer op-k3Yq9ZxV7mW2pL5nR8tB4cF6hJ1dG0sA"}
    every = a.request("GET", "/insights/suspensions", headers=operator).get_json()["suspensions"]
    # Client A's sends to Nigeria were all to that prefix: its country too.
    held = {s["rule"]: s for s in every}
    assert set(held) == {"prefix", "country"}
    assert (held["prefix"]["destination"], held["prefix"]["client"]) == ("+234803", "client-a")
    assert held["prefix"]["until"].endswith("Z")
    assert held["prefix"]["exempt"] == []
    own = a.request("GET", "/insights/suspensions").get_json()["suspensions"]
    assert own == [{k: v for k, v in s.items() if k != "exempt"} for s in every]
    assert b.request("GET", "/insights/suspensions").get_json() == {"suspensions": []}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("OTPSVC_FRAUD_MODE", "block"),
        ("OTPSVC_FRAUD_MIN_CONVERSION", "1.5"),
        ("OTPSVC_FRAUD_SUSPENSIONS", "3600,900"),
        ("OTPSVC_FRAUD_PREFIX_DIGITS", "9"),
    ],
)
def test_bad_settings_of_the_rule_are_named(redis_url: str, name: str, value: str):
    from otpsvc.config import load_settings
    from otpsvc.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        load_settings(termii_env(redis_url, **{name: value}))
    assert any(p.startswith(name) for p in info.value.problems), info.value.problems


def test_a_backlog_is_applied_in_bounded_calls_and_counted_once(
    make_app, openapi, termii: FakeTermii, clock: FakeClock, monkeypatch
):
    """A worker catching up applies the entries in calls of a few operations each (not one
    call that would hold Redis): the same decision, every entry applied once, the streams
    emptied."""
    from otpsvc.store import conversion

    monkeypatch.setattr(conversion, "OPS_PER_CALL", 4)
    app = make_app(OTPSVC_FRAUD_MODE="enforce", OTPSVC_FRAUD_GRACE="5")
    api = Api(app, KEY_A, openapi)
    convert(api, termii, 10)
    pump(api, 25)
    rollups = app.extensions["otpsvc"].rollups
    fold(app)
    clock.advance(8)
    fold(app)
    fold(app)  # nothing new: nothing counted twice
    assert sum(rollups.redis.xlen(k) for k in rollups.streams) == 0
    [held] = rollups.conversion.suspensions(int(clock() * 1000))
    assert (held.rule, held.sends, held.approved) == ("prefix", 25, 0)
    assert api.start(PUMPED.format(800)).get_json()["code"] == "prefix_suspended"


def test_two_workers_folding_at_once_count_each_send_once(
    make_app, openapi, termii: FakeTermii, clock: FakeClock
):
    """Each worker's fold moves a shard's marker in the step that applies its entries: two
    workers folding the same entries at once count every send once."""
    import threading

    from otpsvc.app import rollups_for

    app = make_app(OTPSVC_FRAUD_GRACE="5")
    api = Api(app, KEY_A, openapi)
    pump(api, 25)
    runtime = app.extensions["otpsvc"]
    workers = [rollups_for(runtime.settings, runtime.redis, clock) for _ in range(2)]
    clock.advance(8)
    threads = [threading.Thread(target=w.fold) for w in workers for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for worker in workers:
        worker.fold()
    held = {s.rule: s for s in runtime.service.conversion.suspensions(int(clock() * 1000))}
    assert (held["prefix"].sends, held["prefix"].approved) == (25, 0)
