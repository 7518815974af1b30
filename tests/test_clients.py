"""Several apps on one otpsvc: the client file (per-client policies, budgets, limits, webhooks,
test numbers and spoken scripts), its problems named by TOML path, its JSON Schema, ``otpsvc
say``, and the per-request brand."""

from __future__ import annotations

import copy
import json
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner

from otpsvc.cli import main
from otpsvc.config import load_settings
from otpsvc.config.clients import CLIENT_KEYS
from otpsvc.config.schema import SettingsSchema
from otpsvc.errors import ConfigError
from otpsvc.voice.scripts import SCRIPTS
from otpsvc.voice.templates import Spoken, render_ssml, render_text
from tests.conftest import KEY_A, KEY_B, PHONE, Api, termii_env
from tests.fakes.sevenio import FakeSevenio
from tests.fakes.termii import FakeTermii

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "deploy" / "examples" / "clients.toml"
SCHEMA = json.loads((ROOT / "otpsvc" / "clients.schema.json").read_text())
GOLDEN = json.loads((Path(__file__).parent / "golden" / "scripts.json").read_text())
DE_MOBILE = "+4915123456789"
FR_MOBILE = "+33612345678"


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "clients.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def problems_of(env: dict[str, str]) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    return info.value.problems


# The loader -----------------------------------------------------------------------------------

BAD_FILE = """
[clients.client-a]
code_length = 12
colour = "red"
api_key = "x"
modes = ["sms"]
allowed_countries = "NG"
velocity_phone = "lots"

[clients.client-a.templates.fr]
code = "Votre code {brand}."

[clients.client-a.templates.en]
keypress = "Press 1, {name}."

[clients.nobody]
code_length = 6

[templates.xx]
code = "{code}"
"""


def test_every_problem_of_the_file_is_named_by_its_toml_path(redis_url, tmp_path):
    env = termii_env(redis_url, OTPSVC_CLIENTS_FILE=write(tmp_path, BAD_FILE))
    problems = problems_of(env)
    expected = [
        "clients.client-a.api_key: secrets stay out of this file",
        "clients.client-a.colour: unknown key",
        "clients.client-a.allowed_countries: must be a list of strings",
        "clients.nobody: 'nobody' is not a client of OTPSVC_API_KEYS",
        "templates.xx: no built-in digits for 'xx'",
        "clients.client-a.code_length: Must be greater than or equal to 4",
        "clients.client-a.modes: name one or more of code, keypress",
        "clients.client-a.velocity_phone: not a rate limit",
        "clients.client-a.templates.fr.code: must read {code}",
        "clients.client-a.templates.en.keypress: has an unknown placeholder {name}",
    ]
    for start in expected:
        assert any(p.startswith(start) for p in problems), (start, problems)


def test_check_config_validates_the_file_and_exits_2(redis_url, tmp_path):
    env = termii_env(redis_url, OTPSVC_CLIENTS_FILE=write(tmp_path, BAD_FILE))
    result = CliRunner().invoke(main, ["check-config", "--no-redis"], env=env)
    assert result.exit_code == 2
    assert "clients.client-a.templates.fr.code: must read {code}" in result.output
    assert "clients.client-a.colour: unknown key" in result.output


def test_a_template_too_long_for_a_provider_on_the_route_is_refused(redis_url, tmp_path):
    # 300 characters, under the template cap; the code read 30 times is over 1000 rendered.
    words = "{code} " + "{repeat} " * 29 + "word " * 12
    text = f'[clients.client-a.templates.en]\ncode = "{words}"\n'
    env = termii_env(
        redis_url,
        OTPSVC_CLIENTS_FILE=write(tmp_path, text),
        OTPSVC_PROVIDERS="alphasms",
        OTPSVC_ALPHASMS_API_KEY="alphasms-test-key",
    )
    [problem] = problems_of(env)
    assert problem.startswith("clients.client-a.templates.en.code: rendered for alphasms")


def example_env(redis_url: str) -> dict[str, str]:
    from tests.test_events import SECRET_A

    keys = ",".join(f"{name}:{name}-key-0123456789abcdefABCDEF" for name in ("webapp", "admin"))
    return termii_env(
        redis_url,
        OTPSVC_API_KEYS=keys + ",partner:Zq3kP9vLx2mN8rT4wY6bC1dF5gH7jK0s",
        OTPSVC_CLIENTS_FILE=str(EXAMPLE),
        OTPSVC_PROVIDERS="termii,sevenio",
        OTPSVC_SEVENIO_API_KEY="sevenio-test-api-key",
        OTPSVC_ALLOWED_COUNTRIES="NG,GH,GB",
        OTPSVC_EVENT_WEBHOOK_SECRETS=f"webapp={SECRET_A}",
    )


def test_the_example_file_loads(redis_url):
    settings = load_settings(example_env(redis_url))
    admin = settings.for_client("admin")
    assert (admin.code_length, admin.code_ttl, admin.max_sends) == (8, 120, 1)
    assert admin.modes == frozenset({"keypress", "code"})
    assert settings.for_client("webapp").allowed_countries is not None
    assert len(settings.for_client("webapp").allowed_countries or ()) == 12
    assert settings.event_webhooks["webapp"] == "https://app.example.com/hooks/otp"
    assert settings.for_client("partner").request_brand is True
    assert settings.for_client("partner").routes == {234: ("termii",), 44: ("sevenio",)}
    assert settings.code_length == 6  # the global setting is untouched
    assert "webapp" in settings.templates
    assert "" in settings.templates


# The JSON Schema ------------------------------------------------------------------------------


def example() -> dict[str, Any]:
    return tomllib.loads(EXAMPLE.read_text())


def test_the_json_schema_accepts_the_example():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    jsonschema.validate(example(), SCHEMA)


def test_the_schema_and_the_loader_know_the_same_keys_and_ranges():
    properties = SCHEMA["$defs"]["client"]["properties"]
    assert set(properties) - {"templates"} == set(CLIENT_KEYS)
    fields = SettingsSchema().fields
    for key, kind in CLIENT_KEYS.items():
        if kind != "integer":
            continue
        [bounds] = [v for v in fields[key].validators if type(v).__name__ == "Range"]
        assert (properties[key]["minimum"], properties[key]["maximum"]) == (bounds.min, bounds.max)


BAD_VALUES = [
    ("colour", "red", "unknown key"),
    ("api_key", "x", "secrets stay out"),
    ("code_length", 12, "Must be greater than or equal to 4"),
    ("code_length", "8", "must be an integer"),
    ("code_ttl", 5, "Must be greater than or equal to 30"),
    ("modes", ["sms"], "name one or more of"),
    ("allowed_countries", ["Nigeria"], ""),
    ("velocity_phone", "lots", "not a rate limit"),
    ("call_repeats", 9, "Must be greater than or equal to 1"),
    ("request_brand", "yes", "must be true or false"),
    ("routes", {"234": ["nobody"]}, ""),
    ("default_locale", "english", ""),
]


@pytest.mark.parametrize(("key", "value", "message"), BAD_VALUES)
def test_the_schema_rejects_what_the_loader_rejects(redis_url, tmp_path, key, value, message):
    document = {"clients": {"client-a": {key: value}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, SCHEMA)
    text = "[clients.client-a]\n" + f"{key} = {json.dumps(value)}\n".replace('": ', '" = ')
    if isinstance(value, dict):
        text = "[clients.client-a.routes]\n" + "\n".join(
            f'"{k}" = {json.dumps(v)}' for k, v in value.items()
        )
    problems = problems_of(termii_env(redis_url, OTPSVC_CLIENTS_FILE=write(tmp_path, text)))
    assert any(p.startswith(f"clients.client-a.{key}") for p in problems), problems
    assert any(message in p for p in problems), problems


@pytest.mark.parametrize(
    ("template", "kind"),
    [
        ("Your code.", "code"),
        ("Press 1 for {code}.", "keypress"),
        ("x" * 501 + "{code}", "code"),
        ("Your code is ready.", "sms"),
        ("{code} " + "x" * 160, "sms"),
    ],
)
def test_the_schema_rejects_the_templates_the_loader_rejects(redis_url, tmp_path, template, kind):
    document = copy.deepcopy(example())
    document["templates"]["en"] = {kind: template}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, SCHEMA)
    text = f"[templates.en]\n{kind} = {json.dumps(template)}\n"
    problems = problems_of(termii_env(redis_url, OTPSVC_CLIENTS_FILE=write(tmp_path, text)))
    assert any(p.startswith(f"templates.en.{kind}:") for p in problems), problems


# Templates ------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(GOLDEN))
def test_every_built_in_script_renders_through_the_template_path_as_before(key):
    """The built-in scripts are the default templates: every locale, code length, repeat count,
    plain text and SSML (with and without a voice), keypress and match, exactly as the scripts
    said them before templates (tests/golden/scripts.json; the keypress scripts of de, fr and uk
    were rewritten when the listening test first heard them, and match was added later)."""
    parts = key.split("/")
    locale, mode = parts[0], parts[1]
    if mode in ("keypress", "match"):
        form = parts[2]
        spoken, code, repeats = Spoken(mode, locale, "Acme & Co", 5), "", 2
    else:
        code, repeats, form = parts[2], int(parts[3]), parts[4]
        spoken = Spoken("code", locale, "Acme & Co", 5)
    if form == "text":
        rendered = render_text(spoken, code, repeats)
    else:
        voice = "Vicki" if form == "ssml-voice" else None
        rendered = render_ssml(spoken, code, repeats, voice)
    assert rendered == GOLDEN[key]


def test_a_french_template_with_the_brand_reaches_sevenio_as_valid_ssml(
    make_app, openapi, sevenio: FakeSevenio, tmp_path
):
    text = """
[clients.client-a]
request_brand = true

[clients.client-a.templates.fr]
code = "Bonjour de {brand} <3. Votre code: {code}. Encore: {repeat}. {minutes} minutes."
"""
    app = make_app(
        OTPSVC_PROVIDERS="sevenio", OTPSVC_CLIENTS_FILE=write(tmp_path, text), OTPSVC_CODE_TTL="240"
    )
    api = Api(app, KEY_A, openapi)
    started = api.start(FR_MOBILE, brand="A&B Ltd's")
    assert started.status_code == 201, started.get_json()
    ssml = sevenio.calls[-1].form["text"]
    root = ET.fromstring(ssml)  # noqa: S314 - our own SSML; well-formed, or this raises
    spoken = "".join(root.itertext())
    assert spoken.startswith("Bonjour de A&B Ltd's <3.")
    assert "4 minutes." in spoken
    assert "&amp;B" in ssml
    assert "&lt;3" in ssml
    assert ssml.count('<break time="800ms"/>') == 2
    # Another client, and another locale, keep the built-in script.
    other = Api(app, KEY_B, openapi).start(DE_MOBILE).get_json()
    assert other["status"] == "pending"
    assert "Ihr otpsvc Bestätigungscode lautet" in sevenio.calls[-1].form["text"]


def test_a_brand_in_the_request_is_refused_unless_the_client_may_name_one(
    make_app, openapi, termii: FakeTermii
):
    api = Api(make_app(), KEY_A, openapi)
    refused = api.start(brand="Other")
    assert refused.status_code == 422
    assert "brand" in refused.get_json()["errors"]
    bad = api.start(brand="<script>")
    assert bad.status_code == 422
    assert "brand" in bad.get_json()["errors"]


def test_say_prints_what_every_provider_would_be_sent(redis_url, tmp_path):
    env = example_env(redis_url)
    for client in ("webapp", "admin", "partner"):
        for locale in SCRIPTS:
            args = ["say", "--client", client, "--locale", locale]
            result = CliRunner().invoke(main, args, env=env)
            assert result.exit_code == 0, result.output
            assert f"== {client} · {locale} · code · sevenio (ssml)" in result.output
            assert "termii (its own words)" in result.output
    french = CliRunner().invoke(main, ["say", "--client", "webapp", "--locale", "fr"], env=env)
    assert "script: clients.webapp" in french.output
    assert "Votre code Acme est" in french.output
    english = CliRunner().invoke(main, ["say", "--client", "admin", "--locale", "en"], env=env)
    assert "script: templates" in english.output
    assert "It expires in 2 minutes." in english.output
    keypress = CliRunner().invoke(
        main, ["say", "--client", "admin", "--locale", "de", "--mode", "keypress"], env=env
    )
    assert "bei Acme Admin anmelden" in keypress.output
    match = CliRunner().invoke(
        main, ["say", "--client", "admin", "--locale", "en", "--mode", "match"], env=env
    )
    assert "script: clients.admin" in match.output
    assert "Someone is signing in to Acme Admin with this phone." in match.output
    unknown = CliRunner().invoke(main, ["say", "--client", "nobody"], env=env)
    assert unknown.exit_code != 0


# Several apps on one running service ----------------------------------------------------------

TWO_APPS = """
[clients.client-a]
code_length = 8
code_ttl = 120
max_check_attempts = 3
allowed_countries = ["NG"]
modes = ["code"]
call_budget = "3 per hour"
rate_limit_client = "30 per minute"
"""


def test_two_clients_each_get_their_own_policy(make_app, openapi, termii: FakeTermii, tmp_path):
    app = make_app(OTPSVC_CLIENTS_FILE=write(tmp_path, TWO_APPS))
    a, b = Api(app, KEY_A, openapi), Api(app, KEY_B, openapi)

    first = a.start(PHONE).get_json()
    assert len(termii.code_for(PHONE)) == 8
    assert first["code_length"] == 8
    assert first["attempts_remaining"] == 3
    mine = b.start(PHONE).get_json()
    assert len(termii.code_for(PHONE)) == 6
    assert mine["attempts_remaining"] == 5

    created = app.extensions["otpsvc"].store.load(first["id"])
    assert int(created["ea"]) - int(created["ca"]) == 120_000
    theirs = app.extensions["otpsvc"].store.load(mine["id"])
    assert int(theirs["ea"]) - int(theirs["ca"]) == 300_000

    assert a.start(DE_MOBILE).status_code == 403  # client-a calls Nigeria only
    assert b.start(DE_MOBILE).status_code == 201
    refused = a.start("+2348031234599", mode="keypress")
    assert refused.status_code == 422
    assert "mode" in refused.get_json()["errors"]
    assert a.start("+2348031234599", code_length=4).status_code == 422


def test_one_client_spending_its_own_budget_leaves_the_other_served(
    make_app, openapi, termii: FakeTermii, tmp_path
):
    app = make_app(OTPSVC_CLIENTS_FILE=write(tmp_path, TWO_APPS))
    a, b = Api(app, KEY_A, openapi), Api(app, KEY_B, openapi)
    for i in range(3):
        assert a.start(f"+23480312345{i:02d}").status_code == 201
    spent = a.start("+2348031234510")
    assert spent.status_code == 429
    assert (spent.get_json()["limit"], spent.get_json()["scope"]) == ("call_budget", "client")
    for i in range(5):
        assert b.start(f"+23480312346{i:02d}").status_code == 201


def test_one_clients_request_limit_never_counts_the_others(
    make_app, openapi, termii: FakeTermii, tmp_path
):
    app = make_app(OTPSVC_CLIENTS_FILE=write(tmp_path, TWO_APPS))
    a, b = Api(app, KEY_A, openapi), Api(app, KEY_B, openapi)
    vid = a.start(PHONE).get_json()["id"]
    answers = [a.get(vid).status_code for _ in range(40)]
    assert answers.count(429) == 40 - 29  # its 30 per minute: the start and 29 reads
    other = b.start(PHONE).get_json()["id"]
    assert all(b.get(other).status_code == 200 for _ in range(40))


def test_check_config_shows_each_clients_own_settings_and_no_secret(redis_url):
    from tests.test_events import SECRET_A

    env = example_env(redis_url)
    result = CliRunner().invoke(main, ["check-config", "--no-redis"], env=env)
    assert result.exit_code == 0, result.output
    assert "clients.admin.code_length = 8" in result.output
    assert "clients.admin.modes = code,keypress" in result.output
    assert "clients.partner.routes = 234=termii;44=sevenio" in result.output
    assert "templates = every client: en, webapp: fr" in result.output
    assert SECRET_A not in result.output
    assert "key-0123456789abcdef" not in result.output


def test_the_dev_inbox_names_the_script_a_call_used(make_app, openapi, tmp_path):
    text = '[clients.client-a.templates.en]\ncode = "Hello from {brand}: {code}."\n'
    app = make_app(
        OTPSVC_DEV_MODE="true",
        OTPSVC_PROVIDERS="console",
        OTPSVC_CLIENTS_FILE=write(tmp_path, text),
    )
    a, b = Api(app, KEY_A, openapi), Api(app, KEY_B, openapi)
    a.start(PHONE, locale="en")
    b.start(PHONE, locale="en")
    [mine] = a.request("GET", "/dev/calls").get_json()["calls"]
    [theirs] = b.request("GET", "/dev/calls").get_json()["calls"]
    assert mine["template"] == "clients.client-a"
    assert mine["text"].startswith("Hello from otpsvc: ")
    assert theirs["template"] == "built-in"
    assert theirs["text"].startswith("Your otpsvc verification code is: ")


def test_hup_reloads_the_event_workers_webhooks(
    make_app, openapi, termii: FakeTermii, redis_url, tmp_path
):
    """client-b's webhook is added to the file and the running worker gets a HUP: b's next
    event is delivered, not kept as failed."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import fake_termii_env
    from tests.fakes.receiver import Receiver
    from tests.test_events import SECRET_A, SECRET_B, wait_for

    hooks = {"a": Receiver(), "b": Receiver()}
    try:
        path = write(tmp_path, f'[clients.client-a]\nevent_webhook = "{hooks["a"].url}/a"\n')
        env = {
            **fake_termii_env(redis_url, termii),
            "OTPSVC_CLIENTS_FILE": path,
            "OTPSVC_EVENT_WEBHOOK_SECRETS": f"client-a={SECRET_A};client-b={SECRET_B}",
        }
        worker = subprocess.Popen(
            [sys.executable, "-m", "otpsvc", "worker"],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            time.sleep(2)  # the worker is up and reading
            write(
                tmp_path,
                f'[clients.client-a]\nevent_webhook = "{hooks["a"].url}/a"\n'
                f'[clients.client-b]\nevent_webhook = "{hooks["b"].url}/b"\n',
            )
            worker.send_signal(signal.SIGHUP)
            time.sleep(1)
            app = make_app(**{k: v for k, v in env.items() if k.startswith("OTPSVC_")})
            b = Api(app, KEY_B, openapi)
            b.cancel(b.start().get_json()["id"])
            wait_for(lambda: len(hooks["b"].requests) == 1, timeout=20)
            assert hooks["b"].events()[0]["type"] == "verification.canceled"
        finally:
            worker.terminate()
            _, err = worker.communicate(timeout=20)
        assert b"settings reloaded: webhooks of client-a, client-b" in err
    finally:
        for hook in hooks.values():
            hook.close()


def test_a_clients_routes_and_test_numbers_are_its_own(
    make_app, openapi, termii: FakeTermii, sevenio: FakeSevenio, tmp_path
):
    from datetime import date, timedelta

    last_day = (date.today() + timedelta(days=30)).isoformat()
    text = f"""
[clients.client-a]
test_numbers = ["+2348000000001=482913@{last_day}"]

[clients.client-a.routes]
234 = ["sevenio"]
"""
    app = make_app(OTPSVC_PROVIDERS="termii", OTPSVC_CLIENTS_FILE=write(tmp_path, text))
    a, b = Api(app, KEY_A, openapi), Api(app, KEY_B, openapi)
    assert a.start(PHONE).get_json()["provider"] == "sevenio"
    assert b.start(PHONE).get_json()["provider"] == "termii"

    calls = len(termii.calls) + len(sevenio.calls)
    test = a.start("+2348000000001").get_json()
    assert a.check(test["id"], "482913").get_json()["valid"] is True
    assert len(termii.calls) + len(sevenio.calls) == calls  # no call for a test number
    assert test["provider"] == "test"
    assert b.start("+2348000000001").get_json().get("provider") != "test"  # not b's


@pytest.mark.parametrize(
    ("brand", "accepted"),
    [
        ("Acme 24", True),
        ("Кав'ярня", True),
        ("متجر", True),
        ("Acme ٢٤٦٨", False),  # Arabic-Indic digits: read out as a number beside the code
        ("Acme １２３", False),  # full-width digits
    ],
)
def test_a_brand_takes_letters_of_any_script_but_only_ascii_digits(
    make_app, openapi, termii: FakeTermii, brand, accepted
):
    """A brand is spoken with the code: letters of any script are fine, digits only 0-9."""
    api = Api(make_app(OTPSVC_REQUEST_BRAND="true"), KEY_A, openapi)
    answer = api.request("POST", "/otp/start", json={"phone": "+2348031234567", "brand": brand})
    if accepted:
        assert answer.status_code == 201, answer.get_json()
    else:
        assert answer.status_code == 422
        assert list(answer.get_json()["errors"]) == ["brand"]


def test_a_clients_velocity_above_the_global_budget_is_warned_of(redis_url, tmp_path):
    """A client's own velocity_client above the call budget of every client together gets the
    warning the same value in the environment gets, named by its TOML path."""
    text = '[clients.client-a]\nvelocity_client = "5000 per hour;50000 per day"\n'
    settings = load_settings(termii_env(redis_url, OTPSVC_CLIENTS_FILE=write(tmp_path, text)))
    found = [w for w in settings.warnings if "clients.client-a.velocity_client" in w]
    assert len(found) >= 1, settings.warnings
    assert "OTPSVC_CALL_BUDGET" in found[0]
    quiet = '[clients.client-a]\nvelocity_client = "100 per hour;1000 per day"\n'
    settings = load_settings(termii_env(redis_url, OTPSVC_CLIENTS_FILE=write(tmp_path, quiet)))
    assert not [w for w in settings.warnings if "velocity_client" in w]


def test_the_ssml_length_check_counts_a_brand_as_escaped():
    """A brand is escaped in SSML ("&" becomes "&amp;"): the length check renders the longest
    brand at its most escaped, so a template of many {brand}s cannot pass under seven.io's
    10,000 characters and then exceed them."""
    from otpsvc.voice.templates import fit_problems

    template = "{code} " + "{brand}" * 70
    problems = fit_problems("code", "en", template, ("sevenio",))
    assert problems
    assert "sevenio takes at most 10000" in problems[0]
