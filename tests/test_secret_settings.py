"""Every setting marked secret, set directly or through ``*_FILE``: never printed by
``otpsvc check-config``, never in the start-up log, never in a configuration error."""

from __future__ import annotations

import base64
import logging
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from otpsvc import create_app
from otpsvc.cli import main, masked_url
from otpsvc.config import SECRET_SETTINGS, load_settings
from otpsvc.errors import ConfigError

REDIS_PASSWORD = "Rp-" + secrets.token_urlsafe(16)
TEST_CODE = "739154"


def strong() -> str:
    return secrets.token_urlsafe(32)


def secret_values(redis_url: str) -> dict[str, str]:
    """A valid value for every secret setting, each easy to find in any output."""
    day = (datetime.now(UTC) + timedelta(days=10)).date().isoformat()
    host_port = redis_url.split("://", 1)[1].split("/", 1)[0]
    return {
        "OTPSVC_REDIS_URL": f"redis://:{REDIS_PASSWORD}@{host_port}/0",
        "OTPSVC_SECRET_KEY": strong(),
        "OTPSVC_SECRET_KEY_FALLBACKS": strong(),
        "OTPSVC_API_KEYS": f"web:{strong()}",
        "OTPSVC_TEST_NUMBERS": f"+2348000000001={TEST_CODE}@{day}",
        "OTPSVC_METRICS_TOKEN": strong(),
        "OTPSVC_OPERATOR_KEYS": f"ops:{strong()}",
        "OTPSVC_EVENT_WEBHOOK_SECRETS": "web=whsec_"
        + base64.b64encode(secrets.token_bytes(32)).decode(),
        "OTPSVC_TERMII_API_KEY": strong(),
        "OTPSVC_TERMII_WEBHOOK_SECRET": strong(),
        "OTPSVC_SEVENIO_API_KEY": strong(),
        "OTPSVC_SEVENIO_SIGNING_KEY": strong(),
        "OTPSVC_CEQUENS_API_KEY": strong(),
        "OTPSVC_ALPHASMS_API_KEY": strong(),
    }


PUBLIC = {
    "OTPSVC_PROVIDERS": "termii",
    "OTPSVC_ROUTES": "49=sevenio;380=alphasms;20=cequens",
    "OTPSVC_ALLOWED_COUNTRIES": "NG,DE,UA,EG",
    "OTPSVC_CEQUENS_USERNAME": "otpsvc-service",
    "OTPSVC_CEQUENS_VOICES": "ar=ar-EG-female,en=en-US-female,de=de-DE-female,uk=uk-UA-female",
    "OTPSVC_PUBLIC_URL": "https://otp.example.test",
    "OTPSVC_EVENT_WEBHOOKS": "web=https://hooks.example.test/otp?token=HookQueryT0ken",
}


def hidden(values: dict[str, str]) -> list[str]:
    """What must never be shown: each value, and each part of a list-valued one."""
    parts = {REDIS_PASSWORD, TEST_CODE, "HookQueryT0ken"}
    for value in values.values():
        for piece in value.replace(",", "=").replace(":", "=").split("="):
            if len(piece) >= 16:
                parts.add(piece)
    return sorted(parts)


@pytest.mark.parametrize("as_files", [False, True], ids=["values", "files"])
def test_no_secret_setting_is_shown(redis_url: str, tmp_path: Path, caplog, as_files: bool):
    """check-config prints every setting and masks every secret (URL passwords and query
    credentials included); the start-up log holds none of them."""
    values = secret_values(redis_url)
    assert set(values) == set(SECRET_SETTINGS), "a secret setting was added: add it here"
    env = dict(PUBLIC)
    for name, value in values.items():
        if as_files:
            path = tmp_path / name
            path.write_text(value + "\n")
            env[f"{name}_FILE"] = str(path)
        else:
            env[name] = value
    result = CliRunner().invoke(
        main, ["check-config", "--no-redis"], env=env, catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    printed = result.output
    assert "OTPSVC_METRICS_TOKEN = *** (set)" in printed
    assert "OTPSVC_EVENT_WEBHOOK_SECRETS = web: ***" in printed
    assert "token=***" in printed
    caplog.set_level(logging.DEBUG)
    create_app(env)
    logged = caplog.text
    for secret in hidden(values):
        assert secret not in printed, secret
        assert secret not in logged, secret


def test_a_sentinel_url_with_a_password_is_masked_not_a_crash():
    """The README's multi-host Sentinel URL with a password: masked (it used to crash
    check-config with 'Port could not be cast')."""
    url = "redis+sentinel://:S3cret-pw@s1:26379,s2:26379,s3:26379/otpsvc?password=Q1"
    assert masked_url(url) == "redis+sentinel://:***@s1:26379,s2:26379,s3:26379/otpsvc?password=***"


def test_configuration_errors_do_not_echo_secret_values(redis_url: str):
    """A secret that is refused (too weak, a placeholder) is named, not quoted."""
    weak = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
    env = {**PUBLIC, **secret_values(redis_url), "OTPSVC_METRICS_TOKEN": weak}
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert "OTPSVC_METRICS_TOKEN" in str(info.value)
    assert weak not in str(info.value)
