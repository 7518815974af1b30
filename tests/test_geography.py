"""Where each channel may go: ``allowed_countries_voice`` and ``allowed_countries_sms`` narrow
``allowed_countries`` (globally and per client), so an app can send SMS to fewer countries than
it calls, and a ladder's SMS step into a country SMS may not go to stops the ladder and says
why."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from otpsvc.cli import main
from otpsvc.core.ladder import LadderRunner
from tests.conftest import KEY_A, KEY_B, Api, FakeClock, termii_env
from tests.fakes.sevenio import FakeSevenio
from tests.fakes.termii import FakeTermii
from tests.test_webhooks import Seven

DE = "+4915123456789"
NG = "+2348031234567"


def ladder_to_sms(make_app, openapi, clock: FakeClock, **more: str) -> tuple[object, Seven]:  # type: ignore[no-untyped-def]
    app = make_app(
        OTPSVC_PROVIDERS="sevenio,termii",
        OTPSVC_LADDER="voice:sevenio/30,sms:termii",
        OTPSVC_TERMII_SENDER="Acme",
        OTPSVC_ALLOWED_COUNTRIES="NG,DE",
        **more,
    )
    return app, Seven(Api(app, KEY_A, openapi), clock)


def unanswered(app, seven: Seven, phone: str) -> dict:  # type: ignore[no-untyped-def]
    """Start, report the call unanswered, run the ladder's due step: the verification."""
    started = seven.api.start(phone)
    assert started.status_code == 201, started.get_json()
    body = started.get_json()
    mid = body["delivery"]["provider_message_id"]
    seven.hook("voice_status", {"id": mid, "status": "no-answer"})
    ladder = LadderRunner(app.extensions["otpsvc"].service)
    ladder.run_due()
    ladder.drain()
    return seven.api.get(body["id"]).get_json()


def test_an_sms_step_into_a_country_sms_may_not_reach_stops_the_ladder(
    make_app, openapi, clock: FakeClock, sevenio: FakeSevenio, termii: FakeTermii
):
    app, seven = ladder_to_sms(make_app, openapi, clock, OTPSVC_ALLOWED_COUNTRIES_SMS="NG")
    # Germany may be called, not sent an SMS: the call goes, the SMS step does not.
    german = unanswered(app, seven, DE)
    assert german["ladder"]["stopped"] == "country_not_allowed"
    assert termii.messages == []
    # Nigeria may be both.
    nigerian = unanswered(app, seven, NG)
    assert nigerian["ladder"]["stopped"] is None
    assert len(termii.messages) == 1


def test_a_client_calls_fewer_countries_than_the_others(
    make_app, openapi, tmp_path: Path, termii: FakeTermii
):
    clients = tmp_path / "clients.toml"
    clients.write_text('[clients.client-a]\nallowed_countries_voice = ["NG"]\n')
    app = make_app(OTPSVC_ALLOWED_COUNTRIES="NG,DE", OTPSVC_CLIENTS_FILE=str(clients))
    a, b = Api(app, KEY_A, openapi), Api(app, KEY_B, openapi)
    refused = a.start(DE)
    assert refused.status_code == 403
    assert refused.get_json()["code"] == "country_not_allowed"
    assert refused.get_json()["detail"] == "calls to DE are not allowed"
    assert a.start(NG).status_code == 201
    assert b.start(DE).status_code == 201


def test_a_channel_list_narrows_and_never_widens(make_app, openapi, termii: FakeTermii):
    """A country in the voice list but not in allowed_countries is still refused."""
    app = make_app(OTPSVC_ALLOWED_COUNTRIES="NG", OTPSVC_ALLOWED_COUNTRIES_VOICE="NG,DE")
    answer = Api(app, KEY_A, openapi).start(DE)
    assert answer.status_code == 403
    assert answer.get_json()["detail"] == "calls to DE are not allowed"


def test_check_config_shows_each_channels_countries(redis_url: str):
    env = termii_env(redis_url, OTPSVC_ALLOWED_COUNTRIES="NG,DE", OTPSVC_ALLOWED_COUNTRIES_SMS="NG")
    result = CliRunner().invoke(main, ["check-config", "--no-redis"], env=env)
    assert result.exit_code == 0, result.output
    assert "OTPSVC_ALLOWED_COUNTRIES_SMS = NG" in result.output
    assert "OTPSVC_ALLOWED_COUNTRIES_VOICE = as OTPSVC_ALLOWED_COUNTRIES" in result.output
    bad = CliRunner().invoke(
        main,
        ["check-config", "--no-redis"],
        env={**env, "OTPSVC_ALLOWED_COUNTRIES_SMS": "Nigeria"},
    )
    assert bad.exit_code == 2
    assert "OTPSVC_ALLOWED_COUNTRIES_SMS" in bad.output
