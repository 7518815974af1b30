"""Parsers of the list formats the settings use (pairs, routes, countries, numbers)."""

from __future__ import annotations

import hashlib
import ipaddress
import re
from datetime import date

import phonenumbers
from marshmallow import ValidationError

from otpsvc.config.model import CLIENT_NAME, ApiClient, LadderStep, TestNumber
from otpsvc.config.secrets import (
    MIN_API_KEY_BITS,
    MIN_API_KEY_LENGTH,
    MIN_SECRET_BITS,
    MIN_SECRET_LENGTH,
    weakness,
)
from otpsvc.phones import InvalidPhone, parse_phone
from otpsvc.voice.registry import PROVIDERS


def split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


NUMBER_TYPES: dict[str, int] = {
    name.lower(): value
    for name, value in vars(phonenumbers.PhoneNumberType).items()
    if name.isupper() and isinstance(value, int)
}


def parse_countries(value: str | None) -> frozenset[str] | None:
    if value is None:
        return None
    codes = {code.upper() for code in split(value)}
    unknown = sorted(codes - phonenumbers.SUPPORTED_REGIONS)
    if not codes or unknown:
        raise ValidationError(
            f"must list ISO 3166 alpha-2 codes such as NG,DE; unknown: {', '.join(unknown)}"
        )
    return frozenset(codes)


def parse_suspensions(value: str) -> tuple[int, ...]:
    """How long the conversion rule's suspensions last, by repeat: seconds, comma separated,
    each at least a minute and none shorter than the one before."""
    try:
        lengths = tuple(int(part) for part in split(value))
    except ValueError:
        lengths = ()
    if not lengths or min(lengths) < 60 or list(lengths) != sorted(lengths):
        raise ValidationError(
            "must list seconds, each at least 60 and none shorter than the one before, "
            "such as 900,3600,43200"
        )
    return lengths


def parse_number_types(value: str) -> frozenset[int]:
    names = [name.lower() for name in split(value)]
    unknown = [n for n in names if n not in NUMBER_TYPES]
    if not names or unknown:
        raise ValidationError(
            f"unknown number type(s) {', '.join(unknown)}; known: {', '.join(sorted(NUMBER_TYPES))}"
        )
    return frozenset(NUMBER_TYPES[n] for n in names)


def known_providers(names: list[str]) -> None:
    unknown = [n for n in names if n not in PROVIDERS]
    if unknown:
        raise ValidationError(
            f"unknown provider(s) {', '.join(unknown)}; known: {', '.join(sorted(PROVIDERS))}"
        )


#: How a verification may be made: a code read out, or a key pressed (1 yes, 9 no).
MODES = ("code", "keypress", "match")


def parse_modes(value: str) -> frozenset[str]:
    """``code,keypress,match`` -> the modes a start may ask for."""
    modes = split(value)
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown or not modes:
        raise ValidationError(f"name one or more of {', '.join(MODES)}")
    return frozenset(modes)


#: The channels a ladder step may use.
CHANNELS = ("voice", "sms")


def parse_ladder(value: str) -> tuple[LadderStep, ...]:
    """``voice:termii/45,voice:sevenio/45,voice:cequens`` -> the steps, each waiting its
    seconds (45 when not given) for the person before the next one."""
    steps = []
    for entry in split(value):
        what, slash, wait = entry.partition("/")
        channel, colon, provider = what.partition(":")
        if not colon or channel not in CHANNELS:
            raise ValidationError(
                f"{entry!r}: a step is channel:provider[/seconds]; the channel is voice or sms"
            )
        known_providers([provider])
        if channel == "sms" and not PROVIDERS[provider].sms:
            sms = ", ".join(name for name, spec in PROVIDERS.items() if spec.sms)
            raise ValidationError(f"{entry!r}: {provider} sends no SMS here (SMS: {sms})")
        if slash and not (wait.isdigit() and 5 <= int(wait) <= 3600):
            raise ValidationError(f"{entry!r}: the wait is 5 to 3600 seconds")
        steps.append(LadderStep.parse(entry))
    return tuple(steps)


def parse_routes(value: str) -> dict[int, tuple[str, ...]]:
    """``234=termii,sevenio;20,966=cequens`` -> {234: ("termii", "sevenio"), 20: ...}"""
    routes: dict[int, tuple[str, ...]] = {}
    for entry in (part.strip() for part in value.split(";") if part.strip()):
        codes, sep, names = entry.partition("=")
        providers = split(names)
        if not sep or not providers:
            raise ValidationError(f"{entry!r} must be codes=provider,provider")
        known_providers(providers)
        for code in split(codes):
            if not code.isdigit() or not 1 <= int(code) <= 999:
                raise ValidationError(f"{code!r} is not a country calling code")
            if int(code) in routes:
                raise ValidationError(f"country calling code {code} has two routes")
            routes[int(code)] = tuple(providers)
    return routes


def parse_api_keys(value: str) -> tuple[ApiClient, ...]:
    """``name:key,name:key`` -> clients holding only a digest of each key.

    A name may appear more than once: a client then holds several keys at once, so a key can be
    rolled (add the new one, move the callers, remove the old one) without downtime.
    """
    digests: dict[str, list[bytes]] = {}
    for index, entry in enumerate(split(value), start=1):
        name, sep, key = entry.partition(":")
        if not sep or not CLIENT_NAME.match(name):
            raise ValidationError(
                f"entry {index} must be name:key with name [A-Za-z0-9_.-]{{1,32}}"
            )
        if len(key) < MIN_API_KEY_LENGTH or not key.isprintable() or " " in key:
            raise ValidationError(
                f"key of client {name!r} must be at least {MIN_API_KEY_LENGTH} printable characters"
            )
        problem = weakness(key, MIN_API_KEY_BITS)
        if problem:
            raise ValidationError(f"key {index} (client {name!r}) {problem}")
        digests.setdefault(name, []).append(hashlib.sha256(key.encode()).digest())
    if not digests:
        raise ValidationError("name at least one client as name:key")
    every = [d for keys in digests.values() for d in keys]
    if len(set(every)) != len(every):
        raise ValidationError("keys must be unique")
    return tuple(ApiClient(name=name, key_digests=tuple(keys)) for name, keys in digests.items())


def parse_pairs(value: str, variable: str) -> dict[str, str]:
    """``client=value;client=value`` -> {client: value}."""
    pairs: dict[str, str] = {}
    for entry in (part.strip() for part in value.split(";") if part.strip()):
        name, sep, item = entry.partition("=")
        if not sep or not CLIENT_NAME.match(name.strip()) or not item.strip():
            raise ValidationError(f"{variable}: each entry must be client=value")
        pairs[name.strip()] = item.strip()
    return pairs


def parse_multi_pairs(value: str, variable: str) -> dict[str, tuple[str, ...]]:
    """``client=a;client=b;other=c`` -> {client: (a, b), other: (c,)}: a client named again
    holds several values at once (a secret being rotated)."""
    values: dict[str, list[str]] = {}
    for entry in (part.strip() for part in value.split(";") if part.strip()):
        name, sep, item = entry.partition("=")
        if not sep or not CLIENT_NAME.match(name.strip()) or not item.strip():
            raise ValidationError(f"{variable}: each entry must be client=value")
        values.setdefault(name.strip(), []).append(item.strip())
    return {name: tuple(items) for name, items in values.items()}


def parse_networks(
    value: str,
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    try:
        return tuple(ipaddress.ip_network(part, strict=False) for part in split(value))
    except ValueError as exc:
        raise ValidationError("must list networks such as 10.0.0.0/8,fd00::/8") from exc


TEST_NUMBER_CODE = re.compile(r"[0-9]{4,8}", re.ASCII)


def parse_test_numbers(value: str) -> tuple[TestNumber, ...]:
    """``[client:]+2348000000001=482913@2027-06-30,...`` -> test numbers (number = code @ last
    day, UTC; with ``client:`` only that API client may use it)."""
    numbers: list[TestNumber] = []
    for index, entry in enumerate(split(value), start=1):
        scope, colon, unscoped = entry.partition(":")
        client = scope.strip() if colon else None
        if client is not None and not CLIENT_NAME.match(client):
            raise ValidationError(f"entry {index}: {client!r} is not a client name")
        number, sep, rest = (unscoped if colon else entry).partition("=")
        code, at, day = rest.partition("@")
        if not sep or not at:
            raise ValidationError(f"entry {index} must be +number=code@YYYY-MM-DD")
        if not TEST_NUMBER_CODE.fullmatch(code):
            raise ValidationError(f"entry {index}: the code must be 4 to 8 digits")
        try:
            last_day = date.fromisoformat(day)
        except ValueError as exc:
            raise ValidationError(f"entry {index}: {day!r} is not a date (YYYY-MM-DD)") from exc
        try:
            phone = parse_phone(number.strip())
        except InvalidPhone as exc:
            raise ValidationError(f"entry {index}: the number {exc}") from exc
        numbers.append(TestNumber(phone.e164, code, last_day, phone.region, client))
    if len({n.e164 for n in numbers}) != len(numbers):
        raise ValidationError("a number is listed twice")
    return tuple(numbers)


def parse_fallbacks(value: str) -> tuple[bytes, ...]:
    secrets = split(value)
    for i, secret in enumerate(secrets, start=1):
        if len(secret) < MIN_SECRET_LENGTH:
            raise ValidationError(
                f"entry {i} is shorter than {MIN_SECRET_LENGTH} characters; "
                "list earlier secret keys, comma separated"
            )
        problem = weakness(secret, MIN_SECRET_BITS)
        if problem:
            raise ValidationError(f"entry {i} {problem}")
    return tuple(secret.encode() for secret in secrets)
