"""What calls say: exact texts per locale and code length, the locale choice, and length limits."""

from __future__ import annotations

import re

import pytest

from otpsvc.voice.scripts import SCRIPTS, choose_locale
from otpsvc.voice.templates import Spoken, render_ssml, render_text


def code_text(code: str, locale: str, *, brand: str, repeats: int = 2) -> str:
    """A built-in code script as plain text, through the template path."""
    return render_text(Spoken("code", locale, brand, 5), code, repeats)


def code_ssml(
    code: str, locale: str, *, brand: str, repeats: int = 2, voice: str | None = None
) -> str:
    return render_ssml(Spoken("code", locale, brand, 5), code, repeats, voice)


def keypress_text(locale: str, *, brand: str) -> str:
    return render_text(Spoken("keypress", locale, brand, 5), "")


EXPECTED = {
    ("en", "4821"): (
        "Your Acme verification code is: four, eight, two, one. "
        "Again, your code is: four, eight, two, one."
    ),
    ("fr", "0937"): (
        "Votre code de vérification Acme est: zéro, neuf, trois, sept. "
        "Je répète, votre code est: zéro, neuf, trois, sept."
    ),
    ("de", "120045"): (
        "Ihr Acme Bestätigungscode lautet: eins, zwei, null, null, vier, fünf. "
        "Ich wiederhole, Ihr Code lautet: eins, zwei, null, null, vier, fünf."
    ),
    ("uk", "70000001"): (
        "Ваш код підтвердження Acme: сім, нуль, нуль, нуль, нуль, нуль, нуль, один. "
        "Повторюю, ваш код: сім, нуль, нуль, нуль, нуль, нуль, нуль, один."
    ),
    ("ar", "5309"): (
        "رمز التحقق الخاص بك من Acme هو: خمسة، ثلاثة، صفر، تسعة. "
        "أكرر، رمزك هو: خمسة، ثلاثة، صفر، تسعة."
    ),
    ("pt", "66006"): (
        "O seu código de verificação Acme é: seis, seis, zero, zero, seis. "
        "Repito, o seu código é: seis, seis, zero, zero, seis."
    ),
    ("es", "1234567"): (
        "Su código de verificación de Acme es: uno, dos, tres, cuatro, cinco, seis, siete. "
        "Repito, su código es: uno, dos, tres, cuatro, cinco, seis, siete."
    ),
}


@pytest.mark.parametrize(("key", "text"), list(EXPECTED.items()))
def test_exact_plain_text(key, text):
    """Each locale reads every digit as its own word, twice, in the expected words."""
    locale, code = key
    assert code_text(code, locale, brand="Acme", repeats=2) == text


def test_no_numerals_reach_the_speech_engine():
    """No digit character is ever left in a spoken text: only digit words."""
    for locale in SCRIPTS:
        for code in ("0123", "45678901"):
            text = code_text(code, locale, brand="Acme")
            assert not any(c.isdigit() for c in text), (locale, text)


def test_ssml_puts_a_break_between_digits():
    """SSML has a 400 ms break between digits and escapes the brand."""
    ssml = code_ssml("482", "en", brand="A&B", repeats=1)
    assert ssml == (
        '<speak xml:lang="en-US">Your A&amp;B verification code is<break time="400ms"/>four'
        '<break time="400ms"/>eight<break time="400ms"/>two.</speak>'
    )


def test_ssml_names_the_voice_escaped():
    """A voice wraps the whole script; its name is escaped like any text."""
    ssml = code_ssml("1", "fr", brand="Acme", repeats=1, voice='fr-FR-"x"')
    assert ssml.startswith('<speak xml:lang="fr-FR"><voice name="fr-FR-&quot;x&quot;">Votre')
    assert ssml.endswith("</voice></speak>")


def test_repeats_setting_changes_how_often_the_code_is_read():
    """repeats=3 reads the code three times."""
    assert code_text("1234", "en", brand="Acme", repeats=3).count("one, two, three, four") == 3


def test_keypress_text_asks_for_1_or_9():
    """The keypress script names the brand and the two keys."""
    text = keypress_text("en", brand="Acme")
    assert "Acme" in text
    assert "press 1" in text
    assert "press 9" in text


@pytest.mark.parametrize("locale", sorted(SCRIPTS))
def test_every_locale_has_a_match_script_naming_the_brand_and_the_deny_key(locale):
    """Match mode's script, in each locale: the brand, the key that denies, no code and no digit
    but 9 (the digits to key are on the screen, never in the call); as SSML too."""
    text = render_text(Spoken("match", locale, "Acme", 5), "")
    assert "Acme" in text
    assert re.findall(r"\d", text) == ["9"]
    assert text != render_text(Spoken("keypress", locale, "Acme", 5), "")
    ssml = render_ssml(Spoken("match", locale, "A&B", 5), "")
    assert "A&amp;B" in ssml
    assert ssml.startswith("<speak")


@pytest.mark.parametrize(
    ("requested", "region", "expected"),
    [
        ("fr", "NG", "fr"),
        ("fr-CA", None, "fr"),
        (None, "FR", "fr"),
        (None, "UA", "uk"),
        (None, "EG", "ar"),
        (None, "BR", "pt"),
        (None, "MX", "es"),
        (None, "AT", "de"),
        (None, "NG", "en"),
        ("xx", "NG", "en"),
    ],
)
def test_locale_from_request_then_country_then_default(requested, region, expected):
    """The request's locale wins, then the country's language, then the default."""
    assert choose_locale(requested, region, "en") == expected


def test_longest_text_fits_every_provider():
    """The longest script (8 digits, 4 repeats, a 40-character brand) is far under 10,000."""
    brand = "B" * 40
    longest = max(len(code_ssml("88888888", locale, brand=brand, repeats=4)) for locale in SCRIPTS)
    assert longest < 10_000


def test_start_in_french_for_a_french_number(make_app, openapi, sevenio):
    """A +33 number without a locale is called in French."""
    from tests.conftest import KEY_A, Api

    api = Api(make_app(OTPSVC_PROVIDERS="sevenio"), KEY_A, openapi)
    data = api.start("+33612345678").get_json()
    assert data["locale"] == "fr"
    assert (
        sevenio.calls[-1]
        .form["text"]
        .startswith(
            '<speak xml:lang="fr-FR"><voice name="fr-FR-female">Votre code de vérification otpsvc'
        )
    )
