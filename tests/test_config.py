"""Settings: every problem reported at once, by variable name; secrets never in a repr."""

from __future__ import annotations

import pytest

from otpsvc.config import load_settings
from otpsvc.errors import ConfigError

STRONG_KEY = "Zt7_qM2vR9xK4pW1nB6yH3cJ"
VALID = {
    "OTPSVC_REDIS_URL": "redis://127.0.0.1:6379/0",
    "OTPSVC_SECRET_KEY": "Vq3-nX8_tR2pL7zK4yB9mW6cH1dF5gJ0sA",
    "OTPSVC_API_KEYS": "web:kP4_vN8xQ2rT6yW1zM3bC7dF",
    "OTPSVC_PROVIDERS": "termii",
    "OTPSVC_TERMII_API_KEY": "termii-key-123",
    "OTPSVC_ALLOWED_COUNTRIES": "NG,GH",
}


def problems(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    return str(info.value)


def test_defaults_are_the_documented_ones():
    """A minimal valid environment gives the documented defaults."""
    s = load_settings(VALID)
    assert (s.code_length, s.code_ttl, s.max_check_attempts, s.max_sends, s.resend_cooldown) == (
        6,
        300,
        5,
        5,
        30,
    )
    assert (s.argon2.memory_kib, s.argon2.time_cost, s.argon2.parallelism) == (16384, 1, 1)
    assert s.trusted_proxies == 0
    assert s.provider_settings["termii"].base_url == "https://api.ng.termii.com"


def test_empty_environment_lists_every_missing_setting():
    """All required variables are named in one error, one per line: the country allowlist,
    required outside dev mode, too."""
    text = problems({})
    for name in ("OTPSVC_REDIS_URL", "OTPSVC_SECRET_KEY", "OTPSVC_API_KEYS", "OTPSVC_PROVIDERS"):
        assert name in text
    assert "OTPSVC_ALLOWED_COUNTRIES: required outside dev mode" in text
    assert len(text.splitlines()) == 6


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("OTPSVC_SECRET_KEY", "change-me-to-at-least-32-random-characters"),
        ("OTPSVC_API_KEYS", "webapp:change-me-0123456789abcdef"),
        ("OTPSVC_SECRET_KEY", "s" * 40),
        ("OTPSVC_SECRET_KEY", "abababababababababababababababababab"),
        ("OTPSVC_API_KEYS", "web:" + "k" * 30),
        ("OTPSVC_API_KEYS", "web:aaaaaaaaaaaabbbbbbbbbbbbbb"),
        ("OTPSVC_SECRET_KEY_FALLBACKS", "change-me-to-at-least-32-random-characters"),
        ("OTPSVC_TERMII_API_KEY", "your-termii-api-key"),
        # The adversarial review's weak secrets, each of which used to pass (issue 18).
        ("OTPSVC_SECRET_KEY_FALLBACKS", "a" * 36),
        ("OTPSVC_METRICS_TOKEN", "a" * 16),
        ("OTPSVC_API_KEYS", "web:abcdefghijklmnopqrstuvwxyz0123456789"),
        ("OTPSVC_TERMII_WEBHOOK_SECRET", "Xk3-pQ9z"),
        ("OTPSVC_SEVENIO_SIGNING_KEY", "Xk3-pQ9z"),
    ],
)
def test_placeholder_and_weak_secrets_are_refused(name: str, value: str):
    """The .env.example values and secrets with little entropy stop start-up, with a hint."""
    text = problems({**VALID, name: value})
    assert name in text
    if name != "OTPSVC_TERMII_API_KEY":
        assert "secrets.token_urlsafe" in text or "placeholder" in text


@pytest.mark.parametrize(
    ("secret", "why"),
    [
        ("whsec_AAAA", "3 bytes"),
        ("whsec_" + "A" * 44, "too easy to guess"),
    ],
)
def test_weak_event_webhook_secrets_are_refused(secret: str, why: str):
    """A Standard Webhooks secret of 3 bytes, or of 32 zero bytes, signs nothing anyone could
    not forge: refused, naming the client."""
    text = problems(
        {
            **VALID,
            "OTPSVC_EVENT_WEBHOOKS": "web=https://hooks.example.test/otp",
            "OTPSVC_EVENT_WEBHOOK_SECRETS": f"web={secret}",
        }
    )
    assert "OTPSVC_EVENT_WEBHOOK_SECRETS: web:" in text
    assert why in text


def test_an_open_metrics_endpoint_is_warned_about():
    """Without OTPSVC_METRICS_TOKEN /metrics is open on the port that takes provider webhooks:
    start-up and check-config say so; with a token they do not."""
    assert any("OTPSVC_METRICS_TOKEN" in w for w in load_settings(VALID).warnings)
    token = "Zq8_kM3vR1xK7pW4nB9yH2cJ"
    assert load_settings({**VALID, "OTPSVC_METRICS_TOKEN": token}).warnings == ()


def test_generated_secrets_pass():
    import secrets

    env = {
        **VALID,
        "OTPSVC_SECRET_KEY": secrets.token_urlsafe(32),
        "OTPSVC_API_KEYS": f"web:{secrets.token_urlsafe(24)},admin:{secrets.token_urlsafe(24)}",
    }
    assert load_settings(env).clients


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("OTPSVC_CODE_LENGTH", "3"),
        ("OTPSVC_CODE_LENGTH", "9"),
        ("OTPSVC_CODE_TTL", "601"),
        ("OTPSVC_MAX_CHECK_ATTEMPTS", "0"),
        ("OTPSVC_RESEND_COOLDOWN", "-1"),
        ("OTPSVC_SECRET_KEY", "short"),
        ("OTPSVC_API_KEYS", "web:short"),
        ("OTPSVC_API_KEYS", "no-colon-here-aaaaaaaaaaaaaaaaaaaa"),
        ("OTPSVC_API_KEYS", f"a:{STRONG_KEY},a:{STRONG_KEY}"),
        ("OTPSVC_API_KEYS", f"a:{STRONG_KEY},b:{STRONG_KEY}"),
        ("OTPSVC_PROVIDERS", "nosuch"),
        ("OTPSVC_PROVIDERS", "console"),
        ("OTPSVC_RATE_LIMIT_START_IP", "lots"),
        ("OTPSVC_RATE_LIMIT_CLIENT", "lots"),
        ("OTPSVC_RATE_LIMIT_AUTH_FAILURES", "lots"),
        ("OTPSVC_IPV6_PREFIX", "32"),
        ("OTPSVC_IPV6_PREFIX", "129"),
        ("OTPSVC_VELOCITY_USER", "often"),
        ("OTPSVC_IDEMPOTENCY_TTL", "0"),
        ("OTPSVC_SECRET_KEY_FALLBACKS", "short"),
        ("OTPSVC_TEST_NUMBERS", "+2348000000001=48291@2027-06-30x"),
        ("OTPSVC_TEST_NUMBERS", "+2348000000001=12@2027-06-30"),
        ("OTPSVC_TEST_NUMBERS", "+99912=482913@2027-06-30"),
        ("OTPSVC_TEST_NUMBERS", "+2348000000001=482913"),
        ("OTPSVC_TEST_NUMBERS", "+4915112345678=482913@2027-06-30"),
        ("OTPSVC_VELOCITY_PHONE", "often"),
        ("OTPSVC_CALL_BUDGET", "1000 per fortnight"),
        ("OTPSVC_REDIS_URL", "http://x"),
        ("OTPSVC_TERMII_BASE_URL", "not a url"),
        ("OTPSVC_ARGON2_MEMORY_KIB", "1"),
    ],
)
def test_invalid_value_is_named(name: str, value: str):
    """Each invalid value stops start-up with a message naming its variable."""
    assert name in problems({**VALID, name: value})


def test_allowed_countries_are_required_outside_dev_mode():
    """Without OTPSVC_ALLOWED_COUNTRIES start-up stops, unless in dev mode."""
    env = {k: v for k, v in VALID.items() if k != "OTPSVC_ALLOWED_COUNTRIES"}
    assert "OTPSVC_ALLOWED_COUNTRIES" in problems(env)
    dev = {**env, "OTPSVC_DEV_MODE": "true", "OTPSVC_PROVIDERS": "console"}
    assert load_settings(dev).allowed_countries is None


@pytest.mark.parametrize("value", ["", "NG,XX", "Nigeria"])
def test_bad_country_lists_are_named(value: str):
    """Unknown ISO codes or an empty list stop start-up."""
    assert "OTPSVC_ALLOWED_COUNTRIES" in problems({**VALID, "OTPSVC_ALLOWED_COUNTRIES": value})


def test_number_types_are_parsed_by_name():
    """OTPSVC_ALLOWED_NUMBER_TYPES takes phonenumbers' type names; unknown names are refused."""
    import phonenumbers

    s = load_settings({**VALID, "OTPSVC_ALLOWED_NUMBER_TYPES": "mobile,voip"})
    assert s.allowed_number_types == {
        phonenumbers.PhoneNumberType.MOBILE,
        phonenumbers.PhoneNumberType.VOIP,
    }
    assert "OTPSVC_ALLOWED_NUMBER_TYPES" in problems(
        {**VALID, "OTPSVC_ALLOWED_NUMBER_TYPES": "mobile,landline"}
    )


def test_termii_needs_its_key():
    """Selecting termii without OTPSVC_TERMII_API_KEY is a configuration error."""
    env = {k: v for k, v in VALID.items() if k != "OTPSVC_TERMII_API_KEY"}
    assert "OTPSVC_TERMII_API_KEY" in problems(env)


def test_console_provider_only_in_dev_mode():
    """The console provider is accepted with OTPSVC_DEV_MODE and refused without."""
    assert "dev mode only" in problems({**VALID, "OTPSVC_PROVIDERS": "console"})
    assert load_settings({**VALID, "OTPSVC_PROVIDERS": "console", "OTPSVC_DEV_MODE": "true"})


def test_unknown_settings_are_reported():
    """A misspelled or renamed OTPSVC_* variable is listed, so start-up can warn about it."""
    s = load_settings({**VALID, "OTPSVC_RATE_LIMIT_START_PHONE": "5 per hour", "OTHER": "x"})
    assert s.unknown == ("OTPSVC_RATE_LIMIT_START_PHONE",)
    assert load_settings(VALID).unknown == ()


def test_repr_holds_no_secret():
    """Settings can be printed without showing keys, the secret or the Redis URL's password."""
    env = {**VALID, "OTPSVC_REDIS_URL": "redis://:hunter2@127.0.0.1:6379/0"}
    text = repr(load_settings(env))
    secrets = ("Vq3-nX8_tR2pL7zK4yB9mW6cH1dF5gJ0sA", "kP4_vN8xQ2rT6yW1zM3bC7dF")
    for secret in (*secrets, "termii-key-123", "hunter2"):
        assert secret not in text


CEQUENS = {
    **VALID,
    "OTPSVC_PROVIDERS": "termii",
    "OTPSVC_CEQUENS_USERNAME": "otpsvc",
    "OTPSVC_CEQUENS_API_KEY": "cequens-key-123",
    "OTPSVC_PUBLIC_URL": "https://otp.example.org",
}


def test_a_route_to_cequens_in_a_language_without_a_voice_is_refused():
    """Egypt (Arabic) and Nigeria (English) have CEQUENS voices; France (French) has none until
    OTPSVC_CEQUENS_VOICES names one."""
    assert load_settings(
        {**CEQUENS, "OTPSVC_ALLOWED_COUNTRIES": "EG,NG", "OTPSVC_ROUTES": "20,234=cequens"}
    )
    french = {**CEQUENS, "OTPSVC_ALLOWED_COUNTRIES": "EG,FR", "OTPSVC_ROUTES": "20,33=cequens"}
    text = problems(french)
    assert "OTPSVC_CEQUENS_VOICES" in text
    assert "'fr' (to FR)" in text
    assert load_settings({**french, "OTPSVC_CEQUENS_VOICES": "fr=Celine"})


def test_cequens_as_the_default_route_needs_a_voice_for_every_allowed_country():
    """With CEQUENS in OTPSVC_PROVIDERS, every allowed country without a route of its own
    counts; a country routed elsewhere does not."""
    env = {**CEQUENS, "OTPSVC_PROVIDERS": "cequens", "OTPSVC_ALLOWED_COUNTRIES": "EG,DE"}
    assert "'de' (to DE)" in problems(env)
    assert load_settings({**env, "OTPSVC_ROUTES": "49=termii"})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("OTPSVC_CEQUENS_VOICES", "xx=Zeina"),
        ("OTPSVC_CEQUENS_VOICES", "en"),
        ("OTPSVC_CEQUENS_FIELDS", "text=message"),  # a confirmed name is not renamed
        ("OTPSVC_CEQUENS_FIELDS", "recipient=sayText"),  # would collide with the text field
        ("OTPSVC_CEQUENS_FIELDS", "recipient=bad name"),
        ("OTPSVC_SEVENIO_VOICES", "de=Hans"),
        ("OTPSVC_SEVENIO_KEYPRESS", "perhaps"),
    ],
)
def test_bad_voice_and_field_settings_are_named(name: str, value: str):
    env = {
        **CEQUENS,
        "OTPSVC_PROVIDERS": "cequens,sevenio",
        "OTPSVC_ALLOWED_COUNTRIES": "EG",
        "OTPSVC_SEVENIO_API_KEY": "sevenio-key-123",
        name: value,
    }
    assert name in problems(env)


def test_every_problem_is_reported_at_once():
    """A bad value no longer hides the problems found across settings: a code TTL out of range,
    a missing country allowlist, an event webhook for an unknown client and a bulkhead as large
    as the threads, all in one error (they used to come one round of fixes at a time)."""
    env = {k: v for k, v in VALID.items() if k != "OTPSVC_ALLOWED_COUNTRIES"}
    text = problems(
        {
            **env,
            "OTPSVC_CODE_TTL": "5",
            "OTPSVC_EVENT_WEBHOOKS": "nobody=https://hooks.example.test/otp",
            "OTPSVC_WORKER_THREADS": "4",
            "OTPSVC_PROVIDER_CONCURRENCY": "4",
        }
    )
    assert "OTPSVC_CODE_TTL" in text
    assert "OTPSVC_ALLOWED_COUNTRIES: required outside dev mode" in text
    assert "'nobody' is not a client of OTPSVC_API_KEYS" in text
    assert "OTPSVC_PROVIDER_CONCURRENCY: must be below OTPSVC_WORKER_THREADS" in text


def test_a_failed_setting_does_not_cause_a_second_made_up_problem():
    """An allowlist with an unknown code is reported as that, not also as missing."""
    text = problems({**VALID, "OTPSVC_ALLOWED_COUNTRIES": "NG,XX"})
    assert "unknown: XX" in text
    assert "required outside dev mode" not in text
