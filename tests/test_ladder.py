"""The escalation ladder: a call that is not answered is followed by the next step's call, on the
call's own outcome (its provider's signed report) or when its wait passes; an approval, a
cancel or a limit ends it; a step is placed once, whatever the workers do."""

from __future__ import annotations

import json
import threading
import time

import pytest

from otpsvc.core.ladder import LEASE_MS, LadderRunner
from otpsvc.store.shards import stream_key, tag_of
from tests.conftest import KEY_A, KEY_B, Api, FakeClock
from tests.fakes.sevenio import FakeSevenio
from tests.fakes.termii import FakeTermii
from tests.test_providers import DE_WORDS, spoken_code
from tests.test_webhooks import Seven

DE = "+4915123456789"
LADDER = "voice:sevenio/30,voice:termii/60,voice:sevenio"


@pytest.fixture
def ladder_app(make_app, openapi, clock: FakeClock):  # type: ignore[no-untyped-def]
    def build(**overrides: str):  # type: ignore[no-untyped-def]
        env = {"OTPSVC_PROVIDERS": "sevenio,termii", "OTPSVC_LADDER": LADDER, **overrides}
        app = make_app(**env)
        return app, Seven(Api(app, KEY_A, openapi), clock)

    return build


def runner(app) -> LadderRunner:  # type: ignore[no-untyped-def]
    return LadderRunner(app.extensions["otpsvc"].service)


def run(ladder: LadderRunner) -> int:
    handed = ladder.run_due()
    ladder.drain()
    return handed


def code_of(sevenio: FakeSevenio) -> str:
    return spoken_code(sevenio.calls[-1].form["text"], DE_WORDS)[:6]


def events_of(app, vid: str) -> list[dict]:  # type: ignore[no-untyped-def]
    runtime = app.extensions["otpsvc"]
    stream = stream_key(runtime.settings.redis_prefix, tag_of(vid))
    return [f for _, f in runtime.redis.xrange(stream) if f["vid"] == vid]


def test_a_no_answer_report_moves_to_the_next_provider_at_once(
    ladder_app, sevenio: FakeSevenio, termii: FakeTermii
):
    app, seven = ladder_app(OTPSVC_EVENT_WEBHOOKS="client-a=https://app.example.com/hooks",
                            OTPSVC_EVENT_WEBHOOK_SECRETS="client-a=" + _secret())  # fmt: skip
    started = seven.api.start(DE).get_json()
    assert started["provider"] == "sevenio"
    assert started["ladder"]["next_step_at"] is not None
    began = time.monotonic()
    mid = started["delivery"]["provider_message_id"]
    seven.hook("voice_status", {"id": mid, "status": "no-answer"})
    assert run(runner(app)) == 1
    moved_after = time.monotonic() - began
    assert len(termii.calls) == 1
    assert moved_after < 1.0
    view = seven.api.get(started["id"]).get_json()
    assert view["provider"] == "termii"
    assert view["sends"] == 2
    assert [(s["provider"], s["status"]) for s in view["ladder"]["steps"]] == [
        ("sevenio", "no-answer"),
        ("termii", "queued"),
    ]
    [escalated] = [
        e for e in events_of(app, started["id"]) if e["type"] == "verification.escalated"
    ]
    assert json.loads(escalated["x"]) == {
        "from": "sevenio",
        "to": "termii",
        "why": "no-answer",
        "step": 2,
    }
    pytest.FIGURES["ladder, no-answer report"] = (  # type: ignore[attr-defined]
        f"the next step's call placed {moved_after * 1000:.0f} ms after the report"
    )


def _secret() -> str:
    from tests.test_events import SECRET_A

    return SECRET_A


def test_a_silent_call_moves_on_when_its_wait_passes(
    ladder_app, clock: FakeClock, sevenio: FakeSevenio, termii: FakeTermii
):
    app, seven = ladder_app()
    started = seven.api.start(DE).get_json()
    ladder = runner(app)
    clock.advance(29)
    assert run(ladder) == 0
    assert termii.calls == []
    clock.advance(2)
    assert run(ladder) == 1
    assert len(termii.calls) == 1
    # The third step after the second's wait (60 s), then the ladder is done.
    clock.advance(61)
    assert run(ladder) == 1
    assert len(sevenio.calls) == 2
    view = seven.api.get(started["id"]).get_json()
    assert [s["status"] for s in view["ladder"]["steps"]][:2] == ["timeout", "timeout"]
    assert view["ladder"]["next_step_at"] is None
    clock.advance(3600)
    assert run(ladder) == 0


def test_an_approval_between_steps_ends_the_ladder(
    ladder_app, clock: FakeClock, sevenio: FakeSevenio, termii: FakeTermii
):
    app, seven = ladder_app()
    started = seven.api.start(DE).get_json()
    assert seven.api.check(started["id"], code_of(sevenio)).get_json()["valid"] is True
    clock.advance(31)
    assert run(runner(app)) == 0
    assert termii.calls == []
    assert seven.api.get(started["id"]).get_json()["ladder"]["next_step_at"] is None


def test_a_cancel_ends_the_ladder(ladder_app, clock: FakeClock, termii: FakeTermii):
    app, seven = ladder_app()
    started = seven.api.start(DE).get_json()
    seven.api.cancel(started["id"])
    clock.advance(31)
    assert run(runner(app)) == 0
    assert termii.calls == []


def test_a_limit_ends_the_ladder_and_says_which(ladder_app, clock: FakeClock, termii: FakeTermii):
    app, seven = ladder_app(
        OTPSVC_VELOCITY_PHONE="1 per hour;10 per day",
        OTPSVC_VELOCITY_PHONE_ALL="15 per hour;30 per day",
        OTPSVC_EVENT_WEBHOOKS="client-a=https://app.example.com/hooks",
        OTPSVC_EVENT_WEBHOOK_SECRETS="client-a=" + _secret(),
    )
    started = seven.api.start(DE).get_json()
    clock.advance(31)
    assert run(runner(app)) == 1
    assert termii.calls == []
    view = seven.api.get(started["id"]).get_json()
    assert view["status"] == "pending"  # the first call's code still works
    assert view["ladder"]["stopped"] == "velocity_phone"
    assert view["ladder"]["next_step_at"] is None
    [stopped] = [
        e for e in events_of(app, started["id"]) if e["type"] == "verification.escalation_stopped"
    ]
    assert json.loads(stopped["x"]) == {"why": "velocity_phone"}


def test_two_workers_never_place_one_step_twice(ladder_app, clock: FakeClock, termii: FakeTermii):
    app, seven = ladder_app()
    ids = [seven.api.start(f"+49151234567{i:02d}").get_json()["id"] for i in range(10)]
    clock.advance(31)
    service = app.extensions["otpsvc"].service
    barrier = threading.Barrier(4)

    def worker() -> None:
        barrier.wait()
        for vid in ids:
            service.escalate(vid)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(termii.calls) == 10
    assert all(seven.api.get(vid).get_json()["sends"] == 2 for vid in ids)


def test_a_worker_that_died_holding_a_step_leaves_it_to_the_next(
    ladder_app, clock: FakeClock, termii: FakeTermii
):
    app, seven = ladder_app()
    started = seven.api.start(DE).get_json()
    clock.advance(31)
    store = app.extensions["otpsvc"].store
    # A worker claims the step and dies before placing it.
    assert store.claim_step(started["id"], now_ms=int(clock() * 1000), lease_ms=LEASE_MS)
    assert run(runner(app)) == 0  # held by the dead worker's lease
    clock.advance(LEASE_MS / 1000 + 1)
    assert run(runner(app)) == 1
    assert len(termii.calls) == 1
    assert seven.api.get(started["id"]).get_json()["sends"] == 2


def test_approval_and_the_steps_timer_at_the_same_moment_never_both(
    ladder_app, clock: FakeClock, sevenio: FakeSevenio, termii: FakeTermii
):
    """The person types the code just as the step falls due: either the approval wins and no
    call follows, or the step wins (the old code dies with it) and the check is refused. Never
    a call after an approval."""
    app, seven = ladder_app()
    service = app.extensions["otpsvc"].service
    outcomes = []
    for i in range(12):
        phone = f"+49151234560{i:02d}"
        vid = seven.api.start(phone).get_json()["id"]
        code = code_of(sevenio)
        clock.advance(31)
        barrier = threading.Barrier(2)
        answers: dict[str, object] = {}

        def check(
            vid: str = vid, code: str = code, answers: dict = answers, barrier=barrier
        ) -> None:
            barrier.wait()
            answers["valid"] = seven.api.check(vid, code).get_json().get("valid")

        def step(
            vid: str = vid, answers: dict = answers, lag: float = (i % 6) * 0.02, barrier=barrier
        ) -> None:
            barrier.wait()
            time.sleep(lag)  # from first to well after the check's argon2 comparison
            answers["step"] = service.escalate(vid)

        calls_before = len(termii.calls)
        threads = [threading.Thread(target=check), threading.Thread(target=step)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        placed = len(termii.calls) - calls_before
        status = seven.api.get(vid).get_json()["status"]
        assert (status, placed) in (("approved", 0), ("pending", 1)), (status, placed, answers)
        outcomes.append(status)
    pytest.FIGURES["ladder, approval racing the step"] = (  # type: ignore[attr-defined]
        f"{outcomes.count('approved')} approvals won, {outcomes.count('pending')} steps won, "
        "no call after an approval"
    )


def test_the_worker_process_runs_the_due_steps(
    ladder_app, redis_url, sevenio: FakeSevenio, termii: FakeTermii
):
    """``otpsvc worker`` places the next step (one documented command runs the ladders)."""
    import os
    import subprocess
    import sys

    from tests.conftest import PUBLIC_URL, SEVENIO_KEY, SEVENIO_SIGNING_KEY, fake_termii_env
    from tests.test_events import wait_for

    _, seven = ladder_app()
    env = {
        **os.environ,
        **fake_termii_env(redis_url, termii),
        "OTPSVC_PROVIDERS": "sevenio,termii",
        "OTPSVC_LADDER": LADDER,
    }
    env.update(
        OTPSVC_PUBLIC_URL=PUBLIC_URL,
        OTPSVC_SEVENIO_BASE_URL=sevenio.url,
        OTPSVC_SEVENIO_API_KEY=SEVENIO_KEY,
        OTPSVC_SEVENIO_SIGNING_KEY=SEVENIO_SIGNING_KEY,
    )
    worker = subprocess.Popen(
        [sys.executable, "-m", "otpsvc", "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        started = seven.api.start(DE).get_json()
        mid = started["delivery"]["provider_message_id"]
        seven.hook("voice_status", {"id": mid, "status": "busy"})
        wait_for(lambda: len(termii.calls) == 1, timeout=20)

        def steps() -> list[dict]:
            return seven.api.get(started["id"]).get_json()["ladder"]["steps"]

        wait_for(lambda: len(steps()) == 2, timeout=10)  # the worker recorded its call
        assert steps()[0]["status"] == "busy"
    finally:
        worker.terminate()
        worker.wait(20)


@pytest.mark.parametrize(
    ("ladder", "extra", "problem"),
    [
        ("fax:termii", {}, "the channel is voice or sms"),
        ("voice:nobody", {}, "nobody"),
        ("voice:termii/2,voice:sevenio", {}, "the wait is 5 to 3600 seconds"),
        ("voice:termii/20,voice:sevenio", {}, "step 1 waits 20 s, but the resend cooldown"),
        (
            "voice:termii/30,voice:sevenio/45,voice:termii",
            {},
            "step 2 waits 45 s, but the resend cooldown after call 2 is 60 s",
        ),
        ("voice:termii/30,voice:sevenio", {"OTPSVC_MAX_SENDS": "1"}, "allows 1 calls"),
        (
            "voice:termii/60,voice:sevenio/90,voice:termii",
            {"OTPSVC_CODE_TTL": "120"},
            "step 3 is due 150 s after the start, but a code lives 120 s",
        ),
    ],
)
def test_a_ladder_the_rules_would_cut_short_is_refused(redis_url, ladder, extra, problem):
    from otpsvc.config import load_settings
    from otpsvc.errors import ConfigError
    from tests.conftest import termii_env

    env = termii_env(
        redis_url,
        OTPSVC_LADDER=ladder,
        OTPSVC_PROVIDERS="termii,sevenio",
        OTPSVC_SEVENIO_API_KEY="sevenio-test-api-key",
        **extra,
    )
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert any(p.startswith("OTPSVC_LADDER") and problem in p for p in info.value.problems), (
        info.value.problems
    )


def test_a_clients_own_ladder(
    make_app, openapi, sevenio: FakeSevenio, termii: FakeTermii, tmp_path
):
    from tests.conftest import KEY_B

    path = tmp_path / "clients.toml"
    path.write_text('[clients.client-a]\nladder = "voice:termii/30,voice:sevenio"\n')
    app = make_app(OTPSVC_PROVIDERS="termii,sevenio", OTPSVC_CLIENTS_FILE=str(path))
    a, b = Api(app, KEY_A, openapi), Api(app, KEY_B, openapi)
    assert a.start(DE).get_json()["ladder"]["next_step_at"] is not None
    assert "ladder" not in b.start(DE).get_json()


def died_holding_step_2(app, seven: Seven, clock: FakeClock, *, with_its_call_out: bool) -> None:  # type: ignore[no-untyped-def]
    """A verification whose step 2 a worker claimed and took (as reserve.lua marks it), with
    its call marked placing or not, and then died; its lease has run out."""
    started = seven.api.start(DE).get_json()
    clock.advance(31)
    runtime = app.extensions["otpsvc"]
    store = runtime.store
    assert store.claim_step(started["id"], now_ms=int(clock() * 1000), lease_ms=LEASE_MS)
    record = store.record_key(started["id"])
    runtime.redis.hset(record, "lt", 1)
    if with_its_call_out:
        runtime.redis.hset(record, "lp", runtime.redis.hget(record, "g"))
    clock.advance(LEASE_MS / 1000 + 1)


def test_a_step_whose_worker_died_mid_call_is_not_placed_twice_and_the_ladder_goes_on(
    ladder_app, clock: FakeClock, sevenio: FakeSevenio, termii: FakeTermii
):
    """The worker took step 2 and was killed while its call was with the provider (the record
    says so, as reserve.lua and mark_placing leave it): after the lease, step 2 is not placed
    again; step 3 follows after step 2's wait."""
    app, seven = ladder_app()
    died_holding_step_2(app, seven, clock, with_its_call_out=True)
    assert run(runner(app)) == 1
    assert termii.calls == []
    clock.advance(61)
    assert run(runner(app)) == 1
    assert len(sevenio.calls) == 2  # step 3
    assert termii.calls == []


def test_a_step_whose_worker_died_before_its_call_is_taken_again(
    ladder_app, clock: FakeClock, termii: FakeTermii
):
    """Taken, but killed before the call went to the provider (no 'placing' mark): the next
    worker places it; the step is not lost."""
    app, seven = ladder_app()
    died_holding_step_2(app, seven, clock, with_its_call_out=False)
    assert run(runner(app)) == 1
    assert len(termii.calls) == 1


# SMS as the last step -------------------------------------------------------------------------


def test_an_unanswered_call_ends_with_an_sms_in_the_clients_words(
    make_app, openapi, clock: FakeClock, sevenio: FakeSevenio, termii: FakeTermii, tmp_path
):
    """voice:sevenio then sms:termii: the call is not answered, the code goes by SMS through
    Termii's "Send message", in the client's German SMS template, and that code approves."""
    path = tmp_path / "clients.toml"
    path.write_text(
        '[clients.client-a.templates.de]\nsms = "{brand}-Code: {code} ({minutes} Min.)"\n'
    )
    app = make_app(
        OTPSVC_PROVIDERS="sevenio,termii",
        OTPSVC_LADDER="voice:sevenio/30,sms:termii",
        OTPSVC_TERMII_SENDER="Acme",
        OTPSVC_CLIENTS_FILE=str(path),
    )
    seven = Seven(Api(app, KEY_A, openapi), clock)
    started = seven.api.start(DE).get_json()
    seven.hook(
        "voice_status", {"id": started["delivery"]["provider_message_id"], "status": "no-answer"}
    )
    assert run(runner(app)) == 1
    assert termii.calls == []
    [sms] = termii.messages
    assert sms.json["from"] == "Acme"
    assert sms.json["to"] == DE.lstrip("+")
    text = sms.json["sms"]
    assert text.startswith("otpsvc-Code: ")
    assert text.endswith("(5 Min.)")
    code = text.split(": ", 1)[1].split(" ", 1)[0]
    assert code.isdigit()
    assert len(code) == 6
    view = seven.api.get(started["id"]).get_json()
    assert [(s["channel"], s["provider"]) for s in view["ladder"]["steps"]] == [
        ("voice", "sevenio"),
        ("sms", "termii"),
    ]
    assert seven.api.check(started["id"], code).get_json()["valid"] is True


def test_sevenio_sends_the_sms_in_the_built_in_words(
    make_app, openapi, clock: FakeClock, sevenio: FakeSevenio, termii: FakeTermii
):
    app = make_app(OTPSVC_PROVIDERS="termii,sevenio", OTPSVC_LADDER="voice:termii/30,sms:sevenio")
    api = Api(app, KEY_A, openapi)
    started = api.start("+2348031234567").get_json()
    clock.advance(31)
    assert run(runner(app)) == 1
    [sms] = sevenio.messages
    assert sms.form["to"] == "+2348031234567"
    assert sms.form["foreign_id"] == started["id"]
    text = sms.form["text"]
    assert text.startswith("otpsvc: your verification code is ")
    code = text.removeprefix("otpsvc: your verification code is ").split(".", 1)[0]
    assert api.check(started["id"], code).get_json()["valid"] is True


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ({"OTPSVC_LADDER": "voice:termii/30,sms:cequens"}, "cequens sends no SMS here"),
        ({"OTPSVC_LADDER": "voice:sevenio/30,sms:termii"}, "OTPSVC_TERMII_SENDER: required"),
        ({"OTPSVC_LADDER": "voice:sevenio/30,sms:alphasms"}, "OTPSVC_ALPHASMS_SENDER: required"),
    ],
)
def test_an_sms_step_needs_a_provider_that_sends_sms(redis_url, extra, problem):
    from otpsvc.config import load_settings
    from otpsvc.errors import ConfigError
    from tests.conftest import termii_env

    env = termii_env(
        redis_url,
        OTPSVC_PROVIDERS="termii,sevenio,alphasms,cequens",
        OTPSVC_CEQUENS_USERNAME="cequens-user",
        OTPSVC_CEQUENS_API_KEY="cequens-test-key",
        OTPSVC_PUBLIC_URL="https://otp.example.com",
        OTPSVC_SEVENIO_API_KEY="sevenio-test-api-key",
        OTPSVC_ALPHASMS_API_KEY="alphasms-test-key",
        **extra,
    )
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert any(problem in p for p in info.value.problems), info.value.problems


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("Your code is ready.", "must read {code}"),
        ("{code} " + "x" * 160, "one SMS holds 160"),
        # Within 160 characters, but Cyrillic goes out as UCS-2: 70 a message.
        (
            "Ваш код {code}. " + "Не повідомляйте його нікому, навіть співробітникам " * 2,
            "holds 70",
        ),
        # GSM-7's extension characters take two places each.
        ("{code} " + "[]" * 38, "can be 161 characters"),
    ],
)
def test_an_sms_template_must_read_the_code_and_stay_one_message(
    redis_url, tmp_path, template, problem
):
    """An SMS step's template must read the code and fit one message, counted as the message
    goes out: GSM-7 characters (extension ones twice) up to 160, any other text as UCS-2 up
    to 70."""
    from otpsvc.config import load_settings
    from otpsvc.errors import ConfigError
    from tests.conftest import termii_env

    path = tmp_path / "clients.toml"
    path.write_text(f"[templates.en]\nsms = {json.dumps(template)}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(termii_env(redis_url, OTPSVC_CLIENTS_FILE=str(path)))
    assert any(p.startswith("templates.en.sms:") and problem in p for p in info.value.problems)


def test_the_dev_inbox_shows_a_call_that_escalates_to_an_sms(make_app):
    """Dev mode with a ladder of console steps: a no-answer fault on the first call, its report
    through the console webhook, then the SMS, both in the inbox the dev page shows (``otpsvc
    dev`` runs the steps as this test's runner does)."""
    import requests

    from tests.test_dev_page import _poll_delivery, served
    from tests.test_events import wait_for

    apps = []

    def capture(**env: str):  # type: ignore[no-untyped-def]
        apps.append(make_app(**env))
        return apps[-1]

    auth = {"Authorization": f"Bearer {KEY_A}"}
    calls: list[dict] = []
    with served(capture, OTPSVC_LADDER="voice:console/30,sms:console") as base:
        ladder = runner(apps[0])
        requests.post(base + "/dev/faults", json={"fault": "no-answer"}, headers=auth, timeout=10)
        started = requests.post(base + "/otp/start", json={"phone": DE}, headers=auth, timeout=10)
        assert _poll_delivery(base, started.json()["id"], "no-answer") == "no-answer"

        def inbox() -> int:
            run(ladder)
            calls[:] = requests.get(base + "/dev/calls", headers=auth, timeout=10).json()["calls"]
            return len(calls)

        wait_for(lambda: inbox() == 2, timeout=15)
    sms, call = calls
    assert (call["channel"], sms["channel"]) == ("voice", "sms")
    assert sms["text"].startswith("otpsvc: Ihr Bestätigungscode lautet ")
    assert sms["code"] in sms["text"]


def test_alphasms_sends_the_sms_under_its_alpha_name(
    make_app, openapi, clock: FakeClock, termii: FakeTermii, alphasms
):
    app = make_app(
        OTPSVC_PROVIDERS="termii,alphasms",
        OTPSVC_LADDER="voice:termii/30,sms:alphasms",
        OTPSVC_ALPHASMS_SENDER="Acme",
    )
    api = Api(app, KEY_A, openapi)
    started = api.start("+380971234567", locale="uk").get_json()
    clock.advance(31)
    assert run(runner(app)) == 1
    [sms] = alphasms.messages
    item = json.loads(sms.body)["data"][0]
    assert (item["type"], item["phone"], item["sms_signature"]) == ("sms", 380971234567, "Acme")
    assert item["sms_message"].startswith("otpsvc: ваш код підтвердження ")
    code = item["sms_message"].removeprefix("otpsvc: ваш код підтвердження ").split(".", 1)[0]
    assert api.check(started["id"], code).get_json()["valid"] is True
    assert alphasms.calls == []


def test_every_persons_ladder_counts_against_their_own_limits(
    ladder_app, clock: FakeClock, termii: FakeTermii
):
    """Twelve people of one client, each with their own address, who miss their first call all
    get their second under the shipped per-address limit (10 calls an hour): a step counts
    against its own person, not against one "unknown" address every step shared."""
    app, seven = ladder_app(OTPSVC_VELOCITY_IP="10 per hour;30 per day")
    for i in range(12):
        answer = seven.api.start(f"+49151234567{i:02d}", end_user={"ip": f"198.51.100.{i + 1}"})
        assert answer.status_code == 201
    clock.advance(31)
    ladder = runner(app)
    assert run(ladder) == 12
    assert len(termii.calls) == 12
    # A newcomer's ladder is not stopped by the others' steps either.
    newcomer = seven.api.start("+4915123456799", end_user={"ip": "198.51.100.99"}).get_json()
    clock.advance(31)
    assert run(ladder) == 1
    assert seven.api.get(newcomer["id"]).get_json()["sends"] == 2


def test_a_step_counts_against_its_persons_own_address_and_account(
    ladder_app, clock: FakeClock, termii: FakeTermii
):
    """A step does not escape the person's limits: one whose address and account have used
    their calls this hour has the ladder stopped, by the per-address or per-account limit."""
    app, seven = ladder_app(
        OTPSVC_VELOCITY_IP="3 per hour;30 per day", OTPSVC_VELOCITY_USER="20 per hour"
    )
    person = {"ip": "203.0.113.9", "user_id": "acct-9"}
    laddered = seven.api.start("+4915123456780", end_user=person).get_json()
    for i in range(2):
        assert seven.api.start(f"+491512345678{i + 1}", end_user=person).status_code == 201
    clock.advance(31)
    assert run(runner(app)) == 3
    assert termii.calls == []
    steps = seven.api.get(laddered["id"]).get_json()["ladder"]
    assert steps["stopped"] == "velocity_ip"


def test_a_ladder_survives_a_rotation_of_the_secret_key(
    ladder_app, clock: FakeClock, termii: FakeTermii
):
    """A verification started under the old secret takes its next step after the rotation
    (the old one kept as a fallback): the step finds it by its own number key, not the new
    secret's, and counts against its own person."""
    from tests.conftest import SECRET
    from tests.test_rotation import NEW_SECRET

    _, seven = ladder_app()
    started = seven.api.start(DE, end_user={"ip": "198.51.100.77"}).get_json()
    rotated, _ = ladder_app(OTPSVC_SECRET_KEY=NEW_SECRET, OTPSVC_SECRET_KEY_FALLBACKS=SECRET)
    clock.advance(31)
    assert run(runner(rotated)) == 1
    assert len(termii.calls) == 1
    view = seven.api.get(started["id"]).get_json()
    assert view["sends"] == 2
    assert view["ladder"]["stopped"] is None


def test_a_policy_change_and_hup_are_obeyed_by_the_workers_next_step(
    make_app, openapi, clock: FakeClock, redis_url, sevenio: FakeSevenio, termii: FakeTermii,
    tmp_path,
):  # fmt: skip
    """``kill -HUP`` of ``otpsvc worker`` reloads what its ladder steps obey: a country removed
    from the client's table stops the next step (no call placed there), where the stale worker
    used to call it anyway."""
    import os
    import signal
    import subprocess
    import sys

    from tests.conftest import PUBLIC_URL, SEVENIO_KEY, SEVENIO_SIGNING_KEY, fake_termii_env
    from tests.test_events import wait_for

    clients = tmp_path / "clients.toml"
    clients.write_text('[clients.client-a]\nallowed_countries = ["NG", "DE"]\n')
    overrides = {
        "OTPSVC_PROVIDERS": "sevenio,termii",
        "OTPSVC_LADDER": LADDER,
        "OTPSVC_CLIENTS_FILE": str(clients),
    }
    app = make_app(**overrides)
    seven = Seven(Api(app, KEY_A, openapi), clock)
    env = {
        **os.environ,
        **fake_termii_env(redis_url, termii),
        **overrides,
        "OTPSVC_PUBLIC_URL": PUBLIC_URL,
        "OTPSVC_SEVENIO_BASE_URL": sevenio.url,
        "OTPSVC_SEVENIO_API_KEY": SEVENIO_KEY,
        "OTPSVC_SEVENIO_SIGNING_KEY": SEVENIO_SIGNING_KEY,
    }
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as sink:
        worker = subprocess.Popen(
            [sys.executable, "-m", "otpsvc", "worker"], env=env, stdout=sink, stderr=sink
        )
    try:
        wait_for(lambda: "started" in log_path.read_text(), timeout=20)
        started = seven.api.start(DE).get_json()
        assert started["provider"] == "sevenio"
        clients.write_text('[clients.client-a]\nallowed_countries = ["NG"]\n')
        worker.send_signal(signal.SIGHUP)
        wait_for(lambda: "settings reloaded" in log_path.read_text(), timeout=20)
        seven.hook("voice_status", {"id": started["delivery"]["provider_message_id"],
                                    "status": "busy"})  # fmt: skip
        wait_for(
            lambda: seven.api.get(started["id"]).get_json()["ladder"]["stopped"] is not None,
            timeout=20,
        )
        assert seven.api.get(started["id"]).get_json()["ladder"]["stopped"] == (
            "country_not_allowed"
        )
        assert termii.calls == []
        assert worker.poll() is None
    finally:
        worker.terminate()
        worker.wait(20)


def test_a_noisy_tenants_due_steps_do_not_hold_back_another_tenants_step(
    make_app, openapi, clock: FakeClock, termii: FakeTermii
):
    """30 steps of client-a and one of client-b fall due together on a worker with two
    threads: client-b's step is among the first steps handed out (the tenants take turns),
    not behind client-a's backlog."""
    app = make_app(OTPSVC_PROVIDERS="termii", OTPSVC_LADDER="voice:termii/30,voice:termii")
    noisy, quiet = Api(app, KEY_A, openapi), Api(app, KEY_B, openapi)
    for i in range(30):
        assert noisy.start(f"+49151234567{i:02d}").status_code == 201
    assert quiet.start("+4915123456799").status_code == 201
    termii.delay = 0.05
    before = len(termii.calls)
    clock.advance(31)
    ladder = LadderRunner(app.extensions["otpsvc"].service, threads=2)
    assert run(ladder) == 31
    order = [r.json["phone_number"] for r in termii.calls[before:]]
    assert len(order) == 31
    assert order.index("4915123456799") < 3, order.index("4915123456799")


def test_the_sealed_number_goes_when_the_ladder_ends_and_never_into_events(
    ladder_app, clock: FakeClock, sevenio: FakeSevenio
):
    """The number kept sealed for the next steps is deleted when the verification ends (here,
    approved), and no event ever carries it."""
    app, seven = ladder_app(
        OTPSVC_EVENT_WEBHOOKS="client-a=https://app.example.com/hooks",
        OTPSVC_EVENT_WEBHOOK_SECRETS="client-a=" + _secret(),
    )
    started = seven.api.start(DE).get_json()
    runtime = app.extensions["otpsvc"]
    record = runtime.store.record_key(started["id"])
    assert runtime.redis.hget(record, "pe")
    assert seven.api.check(started["id"], code_of(sevenio)).get_json()["valid"] is True
    assert runtime.redis.hget(record, "pe") is None
    for event in events_of(app, started["id"]):
        assert "pe" not in json.loads(event["rec"])


def test_a_resellers_brand_is_spoken_by_every_step(
    ladder_app, clock: FakeClock, sevenio: FakeSevenio
):
    """The brand a reseller names in its start is spoken by the ladder's later calls too, not
    only by the first."""
    app, seven = ladder_app(
        OTPSVC_REQUEST_BRAND="true", OTPSVC_LADDER="voice:sevenio/30,voice:sevenio"
    )
    assert seven.api.start(DE, brand="Partner Shop").status_code == 201
    clock.advance(31)
    assert run(runner(app)) == 1
    assert len(sevenio.calls) == 2
    assert all("Partner Shop" in call.form["text"] for call in sevenio.calls)


def test_an_idle_look_for_due_steps_asks_redis_nothing(make_app, openapi, redis_url, clock):
    """Once the due index has read every shard, a look for due steps with nothing due sends no
    command to Redis (it used to ask all 256 shards on every turn of the worker's loop); a step
    filed afterwards is announced, and found when it falls due."""
    from otpsvc.dev.monitor import commands_sent

    app = make_app(OTPSVC_LADDER="voice:termii/30,voice:termii")
    store = app.extensions["otpsvc"].store
    now = int(clock() * 1000)
    assert store.due_steps(now) == []  # subscribes and reads every shard once
    assert commands_sent(redis_url, lambda: store.due_steps(now)) == []
    vid = Api(app, KEY_A, openapi).start().get_json()["id"]
    assert store.due_steps(now) == []
    assert store.due_steps(now + 31_000) == [vid]
