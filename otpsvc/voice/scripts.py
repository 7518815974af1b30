"""What a call says: the code read digit by digit, with pauses, repeated."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Script:
    intro: str
    again: str
    separator: str


SCRIPTS: dict[str, Script] = {
    "en": Script(
        intro="Your {brand} verification code is",
        again="Again, your code is",
        separator=", ",
    ),
}
DEFAULT_LOCALE = "en"


def spoken_text(code: str, locale: str, *, brand: str, repeats: int = 2) -> str:
    """Plain text for text-to-speech: each digit its own word, so it is never read as one number."""
    script = SCRIPTS.get(locale.split("-")[0], SCRIPTS[DEFAULT_LOCALE])
    digits = script.separator.join(code)
    sentences = [f"{script.intro.format(brand=brand)}: {digits}."]
    sentences += [f"{script.again}: {digits}."] * (repeats - 1)
    return " ".join(sentences)
