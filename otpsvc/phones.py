"""Phone numbers: parsed and normalised to E.164 once, masked whenever shown."""

from __future__ import annotations

import re
from dataclasses import dataclass

import phonenumbers

E164_INPUT = re.compile(r"\A\+?[1-9][0-9]{6,14}\Z", re.ASCII)


class InvalidPhone(ValueError):
    """Not a valid phone number."""


@dataclass(frozen=True)
class Phone:
    e164: str
    country_code: int
    region: str | None
    number_type: int

    @property
    def masked(self) -> str:
        return mask(self.e164, self.country_code)

    def range_digits(self, digits: int = 3) -> str:
        """The ``digits`` digits after the calling code (``803`` of +234 803...): with the
        calling code, a number range, shown without the number."""
        after = 1 + len(str(self.country_code))
        return self.e164[after : after + digits]

    def __repr__(self) -> str:
        return f"Phone({self.masked})"

    __str__ = __repr__


def parse_phone(raw: str) -> Phone:
    """E.164, the leading ``+`` optional; anything else is refused rather than guessed."""
    if not E164_INPUT.match(raw):
        raise InvalidPhone("must be an E.164 number such as +2348031234567")
    try:
        number = phonenumbers.parse("+" + raw.lstrip("+"), None)
    except phonenumbers.NumberParseException as exc:
        raise InvalidPhone("must be an E.164 number such as +2348031234567") from exc
    if not phonenumbers.is_valid_number(number):
        raise InvalidPhone("is not a valid phone number")
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return Phone(
        e164=e164,
        country_code=int(number.country_code or 0),
        region=phonenumbers.region_code_for_number(number),
        number_type=phonenumbers.number_type(number),
    )


def mask(e164: str, country_code: int) -> str:
    """``+2348031234567`` -> ``+234*******567``: the country and the last three digits only."""
    prefix = f"+{country_code}"
    rest = e164[len(prefix) :]
    return prefix + "*" * max(0, len(rest) - 3) + rest[-3:]


def mask_e164(e164: str) -> str:
    """:func:`mask` for a number already in E.164 form."""
    return mask(e164, int(phonenumbers.parse(e164, None).country_code or 0))
