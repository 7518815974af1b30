"""Each provider's request shape, its documented errors, and connection reuse."""

from __future__ import annotations

import pytest

from otpsvc.voice.scripts import LANGUAGE_TAGS, SCRIPTS
from tests.conftest import CEQUENS_ONLY, CEQUENS_USER, KEY_A, PUBLIC_URL, SEVENIO_KEY, Api
from tests.fakes.alphasms import FakeAlphasms
from tests.fakes.cequens import FakeCequens
from tests.fakes.sevenio import FakeSevenio
from tests.fakes.termii import FakeTermii
from tests.test_scripts import code_ssml

DE_MOBILE = "+4915123456789"
UA_MOBILE = "+380501234567"


@pytest.fixture
def seven_api(make_app, openapi) -> Api:
    return Api(make_app(OTPSVC_PROVIDERS="sevenio", OTPSVC_SEVENIO_FROM="otpsvc"), KEY_A, openapi)


def spoken_code(text: str, words: list[str]) -> str:
    """The digits a text reads out, from its digit words in order."""
    found = []
    for token in text.replace("<break", " <break").replace(",", " ").replace(".", " ").split():
        token = token.split(">")[-1]
        if token in words:
            found.append(str(words.index(token)))
    return "".join(found)


DE_WORDS = ["null", "eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun"]


def test_sevenio_request_shape(seven_api: Api, sevenio: FakeSevenio):
    """X-Api-Key, to, SSML text in the number's language, json=1, foreign_id = verification id."""
    data = seven_api.start(DE_MOBILE).get_json()
    call = sevenio.calls[-1]
    assert call.headers["X-Api-Key"] == SEVENIO_KEY
    form = call.form
    assert form["to"] == DE_MOBILE
    assert form["json"] == "1"
    assert form["from"] == "otpsvc"
    assert form["foreign_id"] == data["id"]
    assert form["text"].startswith(
        '<speak xml:lang="de-DE"><voice name="de-DE-female">Ihr otpsvc Bestätigungscode lautet'
    )
    code = spoken_code(form["text"], DE_WORDS)[:6]
    assert form["text"] == code_ssml(code, "de", brand="otpsvc", repeats=2, voice="de-DE-female")
    assert data["provider"] == "sevenio"
    assert data["delivery"]["provider_message_id"] == "1384013"
    assert data["locale"] == "de"


@pytest.mark.parametrize("locale", sorted(SCRIPTS))
def test_sevenio_every_script_names_its_language_and_voice(seven_api: Api, sevenio, locale):
    """seven.io reads SSML with its default voice unless the SSML picks one: every locale's
    script declares its BCP-47 language and a voice of that language."""
    assert seven_api.start(DE_MOBILE, locale=locale).status_code == 201
    text = sevenio.calls[-1].form["text"]
    tag = LANGUAGE_TAGS[locale]
    assert tag.split("-")[0] == locale
    assert text.startswith(f'<speak xml:lang="{tag}"><voice name="{tag}-female">')
    assert SCRIPTS[locale].intro.format(brand="otpsvc") in text
    assert text.endswith("</voice></speak>")


def test_sevenio_voices_are_a_setting(make_app, openapi, sevenio: FakeSevenio):
    """OTPSVC_SEVENIO_VOICES replaces the voice of the locales it names, not the others."""
    app = make_app(OTPSVC_PROVIDERS="sevenio", OTPSVC_SEVENIO_VOICES="de=de-AT-male")
    api = Api(app, KEY_A, openapi)
    api.start(DE_MOBILE)
    assert '<voice name="de-AT-male">' in sevenio.calls[-1].form["text"]
    api.start("+4915123456780", locale="fr")
    assert '<voice name="fr-FR-female">' in sevenio.calls[-1].form["text"]


def test_sevenio_keypress_is_off_unless_turned_on(make_app, openapi, sevenio: FakeSevenio):
    """Nothing public confirms key presses on a plain seven.io call: off by default (422 on a
    route of seven.io only), on with OTPSVC_SEVENIO_KEYPRESS=true."""
    off = Api(make_app(OTPSVC_PROVIDERS="sevenio"), KEY_A, openapi)
    refused = off.start(DE_MOBILE, mode="keypress")
    assert refused.status_code == 422
    assert "mode" in refused.get_json()["errors"]
    assert sevenio.calls == []
    app = make_app(OTPSVC_PROVIDERS="sevenio", OTPSVC_SEVENIO_KEYPRESS="true")
    on = Api(app, KEY_A, openapi)
    assert on.start(DE_MOBILE, mode="keypress").status_code == 201
    text = sevenio.calls[-1].form["text"]
    assert text.startswith('<speak xml:lang="de-DE"><voice name="de-DE-female">Jemand')


def test_sevenio_code_is_checkable(seven_api: Api, sevenio: FakeSevenio):
    """The code read by seven.io approves the verification."""
    vid = seven_api.start(DE_MOBILE).get_json()["id"]
    code = spoken_code(sevenio.calls[-1].form["text"], DE_WORDS)[:6]
    assert seven_api.check(vid, code).get_json()["valid"] is True


def test_sevenio_plain_text_answer_is_understood(seven_api: Api, sevenio: FakeSevenio):
    """A plain-text answer '100\\n<id>\\n<price>' is a success with that message id."""
    sevenio.mode = "plain"
    data = seven_api.start(DE_MOBILE).get_json()
    assert data["delivery"]["provider_message_id"] == "1384013"


@pytest.mark.parametrize(
    "code",
    [
        "900",
        "901",
        "902",
        "903",
        "201",
        "202",
        "301",
        "305",
        "401",
        "402",
        "403",
        "500",
        "600",
        "700",
    ],
)
def test_sevenio_error_codes_on_http_200_fail_delivery(seven_api: Api, sevenio: FakeSevenio, code):
    """A bare return code other than 100, with HTTP 200, is a failed delivery (502)."""
    sevenio.mode = code
    response = seven_api.start(DE_MOBILE)
    assert response.status_code == 502
    assert response.get_json()["code"] == "delivery_failed"


def test_sevenio_http_error_fails_delivery(seven_api: Api, sevenio: FakeSevenio):
    """HTTP 500 from seven.io is a failed delivery."""
    sevenio.mode = "http500"
    assert seven_api.start(DE_MOBILE).status_code == 502


def test_one_connection_serves_many_starts(seven_api: Api, sevenio: FakeSevenio):
    """Ten calls to seven.io reuse one keep-alive connection."""
    for i in range(10):
        assert seven_api.start(f"+491512345678{i}").status_code == 201
    assert len(sevenio.calls) == 10
    assert sevenio.connections() == 1


def test_termii_connection_is_reused(api: Api, termii: FakeTermii):
    """Ten calls to Termii reuse one keep-alive connection."""
    for i in range(10):
        api.start(f"+23480312345{i:02d}")
    assert termii.connections() == 1


@pytest.fixture
def cequens_api(make_app, openapi) -> Api:
    return Api(make_app(**CEQUENS_ONLY), KEY_A, openapi)


def test_cequens_signs_in_once_for_many_calls(cequens_api: Api, cequens: FakeCequens):
    """The bearer token is fetched once and reused by every call while it is valid."""
    for i in range(5):
        assert cequens_api.start(f"+2010012345{i:02d}").status_code == 201
    assert len(cequens.sign_ins) == 1
    assert len(cequens.calls) == 5
    assert cequens.sign_ins[0].json["userName"] == CEQUENS_USER


def test_cequens_signs_in_again_once_on_401(cequens_api: Api, cequens: FakeCequens):
    """A revoked token: the call gets 401, the provider signs in again and the call goes through."""
    cequens_api.start("+201001234500")
    cequens.revoke_tokens()
    response = cequens_api.start("+201001234501")
    assert response.status_code == 201
    assert len(cequens.sign_ins) == 2
    assert len(cequens.calls) == 3  # the refused one and its retry


def test_cequens_expired_token_is_renewed_before_use(make_app, openapi, cequens: FakeCequens):
    """A token whose exp has passed is renewed before the call, without a 401 round."""
    cequens.token_lifetime = 1  # expires within the renewal margin
    api = Api(make_app(**CEQUENS_ONLY), KEY_A, openapi)
    api.start("+201001234500")
    api.start("+201001234501")
    assert len(cequens.sign_ins) == 2
    assert all(c.json for c in cequens.calls)
    assert len(cequens.calls) == 2


def test_cequens_signs_in_at_the_path_with_the_trailing_slash(cequens_api: Api, cequens):
    """The path without the slash redirects; redirects are not followed: the slash is needed."""
    assert cequens_api.start("+201001234567").status_code == 201
    assert [r.path for r in cequens.requests][:1] == ["/auth/v1/tokens/"]


def test_cequens_request_shape(cequens_api: Api, cequens: FakeCequens):
    """Arabic text for an Egyptian number, the Zeina voice, repeats and a tokened status URL."""
    data = cequens_api.start("+201001234567").get_json()
    body = cequens.calls[-1].json
    assert body["recipientNumber"] == "201001234567"  # digits, as CEQUENS's own examples
    assert body["voiceName"] == "Zeina"
    assert body["sayTextRepeats"] == 2
    assert body["ringingDuration"] == 30
    assert body["metaData"] == {"key": "verification", "value": data["id"]}
    assert body["collectDtmf"] is False
    assert body["sayText"].startswith("رمز التحقق الخاص بك من otpsvc هو")
    assert body["statusCallbackEndpoint"].startswith(f"{PUBLIC_URL}/webhooks/cequens/{data['id']}.")
    assert body["statusCallbackEndpoint"].endswith("/status")


def test_cequens_english_script_gets_an_english_voice(cequens_api: Api, cequens: FakeCequens):
    """Zeina is an Arabic voice: an English script is read by Joanna."""
    cequens_api.start("+201001234567", locale="en")
    body = cequens.calls[-1].json
    assert body["sayText"].startswith("Your otpsvc verification code is")
    assert body["voiceName"] == "Joanna"


def test_cequens_voices_are_a_setting(make_app, openapi, cequens: FakeCequens):
    """OTPSVC_CEQUENS_VOICES names a voice per locale; the defaults stay for the others."""
    app = make_app(**CEQUENS_ONLY, OTPSVC_CEQUENS_VOICES="en=Matthew,fr=Celine")
    api = Api(app, KEY_A, openapi)
    for number, locale, voice in (
        ("+201001234561", "en", "Matthew"),
        ("+201001234562", "fr", "Celine"),
        ("+201001234563", "ar", "Zeina"),
    ):
        assert api.start(number, locale=locale).status_code == 201
        assert cequens.calls[-1].json["voiceName"] == voice


def test_cequens_without_a_voice_for_the_locale_passes_the_call_on(
    make_app, openapi, cequens: FakeCequens, termii: FakeTermii
):
    """A start that asks for a language CEQUENS has no voice for goes to the route's next
    provider; with CEQUENS alone it is a 502, and CEQUENS was never asked."""
    api = Api(make_app(**{**CEQUENS_ONLY, "OTPSVC_PROVIDERS": "cequens,termii"}), KEY_A, openapi)
    response = api.start("+201001234567", locale="fr")
    assert response.status_code == 201
    assert response.get_json()["provider"] == "termii"
    alone = Api(make_app(**CEQUENS_ONLY), KEY_A, openapi)
    failed = alone.start("+201001234568", locale="de")
    assert failed.status_code == 502
    assert failed.get_json()["code"] == "delivery_failed"
    assert cequens.calls == []


def test_cequens_unconfirmed_field_names_can_be_renamed(make_app, openapi, cequens: FakeCequens):
    """OTPSVC_CEQUENS_FIELDS renames the fields no public source confirms; the confirmed ones
    keep their names."""
    cequens.renamed = {"to": "recipientNumber", "voice": "voiceName"}
    app = make_app(**CEQUENS_ONLY, OTPSVC_CEQUENS_FIELDS="recipient=to,voice=voice")
    assert Api(app, KEY_A, openapi).start("+201001234567").status_code == 201
    body = cequens.calls[-1].json
    assert body["to"] == "201001234567"
    assert body["voice"] == "Zeina"
    assert "recipientNumber" not in body
    assert "voiceName" not in body
    assert body["sayText"]
    assert body["ringingDuration"] == 30


@pytest.mark.parametrize("mode", ["server_error", "refused"])
def test_cequens_failures_fail_delivery(cequens_api: Api, cequens: FakeCequens, mode):
    """HTTP 500 or a non-zero replyCode is a failed delivery."""
    cequens.mode = mode
    assert cequens_api.start("+201001234567").status_code == 502


@pytest.fixture
def alpha_api(make_app, openapi) -> Api:
    return Api(make_app(OTPSVC_PROVIDERS="alphasms"), KEY_A, openapi)


def test_alphasms_request_shape(alpha_api: Api, alphasms: FakeAlphasms):
    """JSON with auth and one voice item: integer id and phone, Ukrainian voice and text."""
    data = alpha_api.start(UA_MOBILE).get_json()
    call = alphasms.calls[-1]
    assert call.headers["Content-Type"] == "application/json"
    item = call.json["data"][0]
    assert item["type"] == "voice"
    assert item["phone"] == 380501234567
    assert item["voice"] == {"gender": "female", "language": "uk-UA", "name": "uk-UA-Standard-A"}
    assert item["message"].startswith("Ваш код підтвердження otpsvc")
    assert item["dtmf"] is False
    assert data["delivery"]["provider_message_id"] == "123456789"


def test_alphasms_access_denied_on_http_200(make_app, openapi, alphasms: FakeAlphasms):
    """{"success": false, "error": "Access denied"} with HTTP 200 is a failed delivery."""
    api = Api(
        make_app(OTPSVC_PROVIDERS="alphasms", OTPSVC_ALPHASMS_API_KEY="wrong-key-123"),
        KEY_A,
        openapi,
    )
    response = api.start(UA_MOBILE)
    assert response.status_code == 502


@pytest.mark.parametrize("mode", ["item_error", "server_error"])
def test_alphasms_item_and_server_errors(alpha_api: Api, alphasms: FakeAlphasms, mode):
    """A refused item or a non-JSON answer is a failed delivery."""
    alphasms.mode = mode
    assert alpha_api.start(UA_MOBILE).status_code == 502


def test_slow_provider_within_the_timeout_is_fine(make_app, openapi, sevenio: FakeSevenio):
    """A seven.io answer that takes 0.3 s with a 2 s read timeout is a normal success."""
    api = Api(make_app(OTPSVC_PROVIDERS="sevenio"), KEY_A, openapi)
    sevenio.delay = 0.3
    data = api.start(DE_MOBILE).get_json()
    assert data["delivery"]["status"] == "queued"


def test_hanging_sevenio_is_unknown_not_repeated(make_app, openapi, sevenio: FakeSevenio):
    """seven.io hanging past the read timeout: 201 with delivery 'unknown' and one request only."""
    api = Api(
        make_app(OTPSVC_PROVIDERS="sevenio", OTPSVC_PROVIDER_READ_TIMEOUT="0.3"), KEY_A, openapi
    )
    sevenio.hang = True
    data = api.start(DE_MOBILE).get_json()
    assert data["delivery"]["status"] == "unknown"
    assert len(sevenio.calls) == 1


def test_hanging_cequens_sign_in_is_a_definite_failure(
    make_app, openapi, cequens: FakeCequens, sevenio: FakeSevenio
):
    """A sign-in that never answers placed no call: the next provider takes it (no 'unknown')."""
    api = Api(
        make_app(
            **{**CEQUENS_ONLY, "OTPSVC_PROVIDERS": "cequens,sevenio"},
            OTPSVC_PROVIDER_READ_TIMEOUT="0.3",
        ),
        KEY_A,
        openapi,
    )
    cequens.hang = True
    data = api.start("+201001234567").get_json()
    assert data["provider"] == "sevenio"
    assert data["delivery"]["status"] == "queued"
    assert cequens.calls == []


def test_alphasms_success_may_be_the_integer_1(alpha_api: Api, alphasms: FakeAlphasms):
    """The doc table types ``success`` as an integer; its examples show ``true``: both work."""
    alphasms.mode = "integer_success"
    assert alpha_api.start(UA_MOBILE).status_code == 201


def test_sevenio_bare_code_in_json_quotes_keeps_its_meaning(
    make_app, openapi, sevenio: FakeSevenio, caplog
):
    """'"900"' is seven.io's 900 (invalid API key), not an unexpected answer."""
    api = Api(make_app(OTPSVC_PROVIDERS="sevenio"), KEY_A, openapi)
    sevenio.mode = '"900"'
    assert api.start(DE_MOBILE).status_code == 502
    assert "invalid API key" in caplog.text
    assert "code 900" in caplog.text
