"""Key rotation without downtime: several API keys per client, earlier secret keys as fallbacks,
and every secret setting from a file."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from argon2 import PasswordHasher

from otpsvc.config import Argon2Params, load_settings
from otpsvc.core.keyring import Keyring
from otpsvc.errors import ConfigError
from tests.conftest import SECRET, Api, termii_env, wrong_code
from tests.fakes.termii import FakeTermii

OLD_KEY = "webapp-old-key-0123456789abcdef"
NEW_KEY = "webapp-new-key-0123456789abcdef"
NEW_SECRET = "the-next-secret-key-0123456789abcdef-xyz"


def test_a_client_may_hold_two_keys_while_one_is_rolled(make_app, openapi, termii: FakeTermii):
    """Both keys are the same client: a verification started with one is read with the other."""
    app = make_app(OTPSVC_API_KEYS=f"webapp:{OLD_KEY},webapp:{NEW_KEY}")
    old, new = Api(app, OLD_KEY, openapi), Api(app, NEW_KEY, openapi)
    vid = old.start().get_json()["id"]
    assert new.get(vid).status_code == 200
    assert new.check(vid, termii.last_code()).get_json()["valid"] is True


def test_a_removed_key_stops_working(make_app, openapi):
    app = make_app(OTPSVC_API_KEYS=f"webapp:{NEW_KEY}")
    assert Api(app, OLD_KEY, openapi).get("0" * 36).status_code == 401


def test_codes_made_under_an_earlier_secret_still_verify(make_app, openapi, termii: FakeTermii):
    """Start under the old secret; after the rotation (old one as fallback) the code passes."""
    before = Api(make_app(), "client-a-key-0123456789abcdef", openapi)
    vid = before.start().get_json()["id"]
    code = termii.last_code()
    after = Api(
        make_app(OTPSVC_SECRET_KEY=NEW_SECRET, OTPSVC_SECRET_KEY_FALLBACKS=SECRET),
        "client-a-key-0123456789abcdef",
        openapi,
    )
    assert after.check(vid, wrong_code(code)).get_json()["valid"] is False
    assert after.check(vid, code).get_json()["valid"] is True


def test_without_the_fallback_earlier_codes_stop_working(make_app, openapi, termii: FakeTermii):
    before = Api(make_app(), "client-a-key-0123456789abcdef", openapi)
    vid = before.start().get_json()["id"]
    code = termii.last_code()
    after = Api(make_app(OTPSVC_SECRET_KEY=NEW_SECRET), "client-a-key-0123456789abcdef", openapi)
    assert after.check(vid, code).get_json()["valid"] is False


def test_new_verifications_use_the_current_secret(
    make_app, openapi, termii: FakeTermii, redis_client: redis.Redis
):
    """After the rotation a new code verifies under the new secret alone."""
    rotated = make_app(OTPSVC_SECRET_KEY=NEW_SECRET, OTPSVC_SECRET_KEY_FALLBACKS=SECRET)
    vid = Api(rotated, "client-a-key-0123456789abcdef", openapi).start().get_json()["id"]
    code = termii.last_code()
    only_new = Api(make_app(OTPSVC_SECRET_KEY=NEW_SECRET), "client-a-key-0123456789abcdef", openapi)
    assert only_new.check(vid, code).get_json()["valid"] is True


def test_a_failure_cap_made_under_an_earlier_secret_still_holds(
    make_app, openapi, termii: FakeTermii
):
    """Wrong codes counted before the rotation keep the number's daily cap after it."""
    env = {"OTPSVC_MAX_FAILED_CHECKS_PER_NUMBER": "1"}
    before = Api(make_app(**env), "client-a-key-0123456789abcdef", openapi)
    vid = before.start().get_json()["id"]
    before.check(vid, wrong_code(termii.last_code()))
    before.cancel(vid)
    after = Api(
        make_app(**env, OTPSVC_SECRET_KEY=NEW_SECRET, OTPSVC_SECRET_KEY_FALLBACKS=SECRET),
        "client-a-key-0123456789abcdef",
        openapi,
    )
    refused = after.start()
    assert refused.status_code == 429
    assert refused.get_json()["code"] == "too_many_failed_checks"


def test_callback_tokens_of_an_earlier_secret_are_recognised_as_its_own():
    """A token of the earlier secret is recognised, and named as that secret's: the caller holds
    it to the send's own secret."""
    old = Keyring(SECRET.encode(), Argon2Params(memory_kib=64))
    rotated = Keyring(NEW_SECRET.encode(), Argon2Params(memory_kib=64), (SECRET.encode(),))
    alone = Keyring(NEW_SECRET.encode(), Argon2Params(memory_kib=64))
    token = old.callback_token("a" * 36, 2, "status")
    assert rotated.verify_callback_token(token, "status") == ("a" * 36, 2, old.current_id)
    assert old.current_id != rotated.current_id
    assert alone.verify_callback_token(token, "status") is None


def test_secrets_come_from_files(redis_url: str, tmp_path: Path):
    """*_FILE names a mounted secret; a trailing newline is not part of it."""
    env = termii_env(redis_url)
    for name in ("OTPSVC_SECRET_KEY", "OTPSVC_API_KEYS", "OTPSVC_TERMII_API_KEY"):
        path = tmp_path / name
        path.write_text(env.pop(name) + "\n")
        env[f"{name}_FILE"] = str(path)
    settings = load_settings(env)
    assert settings.secret_key == SECRET.encode()
    assert [c.name for c in settings.clients] == ["client-a", "client-b"]
    assert settings.provider_settings["termii"].api_key == "termii-key-123"
    assert settings.unknown == ()


def test_a_value_and_a_file_for_one_secret_is_an_error(redis_url: str, tmp_path: Path):
    env = termii_env(redis_url)
    (tmp_path / "key").write_text(SECRET)
    env["OTPSVC_SECRET_KEY_FILE"] = str(tmp_path / "key")
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert "OTPSVC_SECRET_KEY_FILE" in str(info.value)


def test_an_unreadable_secret_file_is_named(redis_url: str, tmp_path: Path):
    env = termii_env(redis_url)
    del env["OTPSVC_SECRET_KEY"]
    env["OTPSVC_SECRET_KEY_FILE"] = str(tmp_path / "missing")
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert "OTPSVC_SECRET_KEY_FILE" in str(info.value)


def test_a_verifier_names_its_secret_without_growing():
    """The secret's id rides in the salt: the stored verifier keeps its length, and a
    rotated keyring verifies old and new verifiers with one argon2 run each."""
    params = Argon2Params(memory_kib=64)
    old = Keyring(SECRET.encode(), params)
    rotated = Keyring(NEW_SECRET.encode(), params, (SECRET.encode(),))
    before, after = old.hash_code("id", "123456"), rotated.hash_code("id", "654321")
    plain = PasswordHasher(time_cost=1, memory_cost=64, parallelism=1, hash_len=16, salt_len=16)
    assert len(before) == len(after) == len(plain.hash("x")) - len("$argon2id$v=19$")
    assert rotated.verify_code(before, "id", "123456")
    assert rotated.verify_code(after, "id", "654321")
    assert not rotated.verify_code(before, "id", "654321")
    assert not old.verify_code(after, "id", "654321")
