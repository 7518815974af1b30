"""Spoken scripts as templates: what a call says, per client and locale, with named placeholders.

A template is text with placeholders: ``{brand}``, ``{code}`` (the code, read digit by digit
with the locale's pacing), ``{repeat}`` (the code again) and ``{minutes}`` (how long the code
lives). A code template must read ``{code}``; a keypress template reads no code, nor does a
match template (the two digits are on the person's screen, never in the call). ``{{`` and
``}}`` are a literal brace.

The same template is rendered as plain text (CEQUENS, AlphaSMS, the dev console) or as SSML
(seven.io): in SSML every piece of text is escaped, digits are separated by a 400 ms break, the
``:`` that leads into a code is a 400 ms pause and a sentence's end after a code an 800 ms one.
The built-in scripts of :mod:`otpsvc.voice.scripts` are the default templates, written in this
format (:func:`default_template`); rendering them gives exactly what the calls said before.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from xml.sax.saxutils import escape

from otpsvc.voice.scripts import PAUSE_MS, SCRIPTS, language_of, script_for, speak

PLACEHOLDERS = {
    "code": ("brand", "code", "repeat", "minutes"),
    "keypress": ("brand", "minutes"),
    "match": ("brand", "minutes"),
    "sms": ("brand", "code", "minutes"),
}
#: One SMS holds 160 characters of the GSM 03.38 alphabet (7 bits each; the extension characters
#: take two), or 70 of any other text (UCS-2). A longer text goes out in parts (153 or 67 each),
#: each paid for: an SMS step must stay one message.
MAX_SMS_CHARS = 160
MAX_SMS_UCS2_CHARS = 70
GSM7 = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")


def sms_size(text: str) -> tuple[str, int, int]:
    """(encoding, size in its units, the most one message holds): ``gsm7`` counts the
    extension characters twice; anything outside the GSM alphabet makes the whole text
    ``ucs2``."""
    if all(ch in GSM7 or ch in GSM7_EXTENSION for ch in text):
        return "gsm7", sum(2 if ch in GSM7_EXTENSION else 1 for ch in text), MAX_SMS_CHARS
    return "ucs2", len(text.encode("utf-16-le")) // 2, MAX_SMS_UCS2_CHARS


#: The longest template text accepted (a spoken code message is about 200 characters).
MAX_TEMPLATE_CHARS = 500
#: What a provider takes at most in one call's text, rendered; providers not listed document
#: no limit and get otpsvc's own (:data:`DEFAULT_TEXT_LIMIT`).
TEXT_LIMITS = {"sevenio": 10_000}
DEFAULT_TEXT_LIMIT = 1_000
#: The providers that speak our text, and in which form; the others (Termii) speak their own.
FORMS = {"sevenio": "ssml", "cequens": "text", "alphasms": "text", "console": "text"}
SENTENCE_BREAK = '<break time="800ms"/>'


@dataclass(frozen=True)
class Spoken:
    """What one call says: the template (``None``: the built-in one) and what fills it."""

    mode: str
    locale: str
    brand: str
    minutes: int
    template: str | None = None
    #: Where the template came from, for the dev inbox: ``clients.NAME``, ``templates`` (the
    #: file's defaults) or ``built-in``.
    source: str = "built-in"


def default_template(mode: str, locale: str, repeats: int = 2) -> str:
    """The built-in script of ``locale`` as a template; the code is read ``repeats`` times."""
    script = script_for(locale)
    if mode == "keypress":
        return _literal(script.keypress)
    if mode == "match":
        return _literal(script.match)
    if mode == "sms":
        return (
            _literal(script.sms).replace("{{code}}", "{code}").replace("{{minutes}}", "{minutes}")
        )
    intro = _literal(script.intro).replace("{{brand}}", "{brand}")
    again = _literal(script.again)
    return " ".join([f"{intro}: {{code}}.", *[f"{again}: {{repeat}}."] * (repeats - 1)])


def _literal(text: str) -> str:
    """A built-in sentence as template text: its braces escaped but ``{brand}``."""
    return text.replace("{", "{{").replace("}", "}}").replace("{{brand}}", "{brand}")


def fields_of(template: str) -> list[str]:
    """The placeholders a template uses, in order; ValueError when it is malformed."""
    return [name for _, name, spec, conv in string.Formatter().parse(template) if name is not None]


def template_problems(mode: str, template: str) -> list[str]:
    """What is wrong with a template of ``mode`` (empty when nothing is)."""
    problems = []
    if len(template) > MAX_TEMPLATE_CHARS:
        problems.append(f"is {len(template)} characters; at most {MAX_TEMPLATE_CHARS}")
    if any(not ch.isprintable() and ch != " " for ch in template):
        problems.append("has a control character")
    try:
        names = fields_of(template)
    except ValueError as exc:
        return [*problems, f"is not a template: {exc}"]
    allowed = PLACEHOLDERS[mode]
    for name in names:
        if name not in allowed:
            problems.append(
                f"has an unknown placeholder {{{name}}} (a {mode} template may use "
                + ", ".join(f"{{{n}}}" for n in allowed)
                + ")"
            )
    if any(spec or conv for _, name, spec, conv in string.Formatter().parse(template) if name):
        problems.append("placeholders take no format spec or conversion")
    if mode in ("code", "sms") and "code" not in names:
        problems.append("must read {code}")
    if mode == "sms" and not problems:
        longest = render_sms(Spoken("sms", "en", "W" * 40, 10, template), "8" * 8)
        encoding, size, most = sms_size(longest)
        if size > most:
            alphabet = "GSM-7" if encoding == "gsm7" else "UCS-2 (characters outside GSM-7)"
            problems.append(
                f"can be {size} characters sent in {alphabet}; one SMS holds {most}, and an "
                "SMS step must stay one message"
            )
    return problems


def render_text(spoken: Spoken, code: str, repeats: int = 2) -> str:
    """Plain text for text-to-speech: each digit its own word, separated by the locale's comma."""
    script = script_for(spoken.locale)
    digits = script.separator.join(script.digits[int(d)] for d in code)
    text = spoken.template or default_template(spoken.mode, spoken.locale, repeats)
    return _fill(text, digits, spoken)


def render_sms(spoken: Spoken, code: str) -> str:
    """An SMS: the template's text with the code in numerals (it is typed, not heard)."""
    return _fill(spoken.template or default_template("sms", spoken.locale), code, spoken)


def _fill(text: str, code: str, spoken: Spoken) -> str:
    """A template's text with ``{code}`` and ``{repeat}`` as ``code``, and the brand and
    minutes of ``spoken``."""
    values = {"code": code, "repeat": code, "brand": spoken.brand, "minutes": str(spoken.minutes)}
    return "".join(
        literal + values.get(name or "", "")
        for literal, name, _, _ in string.Formatter().parse(text)
    )


def render_ssml(spoken: Spoken, code: str, repeats: int = 2, voice: str | None = None) -> str:
    """The same as SSML: text escaped, a break between digits, pauses around the code."""
    script = script_for(spoken.locale)
    pause = f'<break time="{PAUSE_MS}ms"/>'
    digits = pause.join(escape(script.digits[int(d)]) for d in code)
    text = spoken.template or default_template(spoken.mode, spoken.locale, repeats)
    pieces: list[tuple[str, str | None]] = [
        (literal, name) for literal, name, _, _ in string.Formatter().parse(text)
    ]
    out = []
    after_code = False
    for literal, name in pieces:
        piece = literal
        if after_code:
            # A sentence that ends right after a code: a longer pause before the next one.
            piece = re.sub(r"^([.!?])\s+", lambda m: m.group(1) + "\0", piece)
        if name in ("code", "repeat"):
            # The colon that leads into the code is the pause before its first digit.
            piece = re.sub(r":?\s*$", "", piece)
        part = escape(piece).replace("\0", SENTENCE_BREAK)
        out.append(part)
        if name in ("code", "repeat"):
            out.append(pause + digits)
        elif name == "brand":
            out.append(escape(spoken.brand))
        elif name == "minutes":
            out.append(str(spoken.minutes))
        after_code = name in ("code", "repeat")
    return speak(spoken.locale, "".join(out), voice)


def fit_problems(mode: str, locale: str, template: str, providers: tuple[str, ...]) -> list[str]:
    """A template rendered at its longest (8 digits of the locale's longest digit word, a
    40-character brand) must fit every provider on the route that speaks our text (an SMS
    template's length is checked on its own)."""
    if mode == "sms":
        return []
    script = script_for(locale)
    longest = max(range(10), key=lambda d: len(script.digits[d]))
    # The longest brand as sent: 40 characters that SSML escapes the most ("&" is "&amp;").
    spoken = Spoken(mode, locale, "&" * 40, 10, template)
    code = str(longest) * 8
    problems = []
    for provider in providers:
        form = FORMS.get(provider)
        if form is None:
            continue  # speaks its own words (Termii)
        rendered = (
            render_ssml(spoken, code, voice="x" * 40)
            if form == "ssml"
            else render_text(spoken, code)
        )
        limit = TEXT_LIMITS.get(provider, DEFAULT_TEXT_LIMIT)
        if len(rendered) > limit:
            problems.append(
                f"rendered for {provider} it can be {len(rendered)} characters; "
                f"{provider} takes at most {limit}"
            )
    return problems


def choose_template(
    templates: Mapping[str, Mapping[str, Mapping[str, str]]], client: str, mode: str, locale: str
) -> tuple[str | None, str]:
    """(template, where it came from): the client's for the locale, else the file's default for
    it, else the built-in one (None)."""
    language = language_of(locale)
    own = templates.get(client, {}).get(language, {}).get(mode)
    if own is not None:
        return own, f"clients.{client}"
    shared = templates.get("", {}).get(language, {}).get(mode)
    if shared is not None:
        return shared, "templates"
    return None, "built-in"


def locale_problem(locale: str) -> str | None:
    if locale not in SCRIPTS:
        return f"no built-in digits for {locale!r}; templates exist for " + ", ".join(
            sorted(SCRIPTS)
        )
    return None
