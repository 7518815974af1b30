"""The price file (``OTPSVC_PRICES_FILE``): what a send costs, per provider and channel, with a
default and overrides by calling code or a longer number prefix. The longest prefix of the
number wins. Amounts are decimal strings in the deployment's currency (``OTPSVC_CURRENCY``)::

    currency = "EUR"          # optional; when given, it must be OTPSVC_CURRENCY

    [termii.voice]
    default = "0.0200"
    "234" = "0.0120"          # Nigeria
    "23480" = "0.0150"        # a longer prefix wins

    [termii.sms]
    default = "0.0040"

A provider's own report of what a send cost (seven.io's ``price``) is kept beside for
reconciliation; the price file governs the budgets.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from typing import Any

from otpsvc.config.clients import read_setting_file
from otpsvc.money import BadAmount, PriceBook, parse_amount
from otpsvc.voice.registry import PROVIDERS

CHANNELS = ("voice", "sms")
PREFIX = re.compile(r"\A[1-9][0-9]{0,14}\Z")

#: The price file's text as the gunicorn master last accepted it (see ``gunicorn.conf.py``):
#: workers forked after a reload read this, so a bad file never reaches them.
accepted_text: str | None = None


def read_price_file(path: str, currency: str | None, problems: list[str]) -> PriceBook | None:
    """The file, checked: known providers and channels, prefixes of digits, exact amounts, a
    default in every table, the currency. None (with problems) when it cannot be used."""
    text = read_setting_file(path, accepted_text, "OTPSVC_PRICES_FILE", problems)
    return None if text is None else parse_price_file(text, currency, problems)


def parse_price_file(text: str, currency: str | None, problems: list[str]) -> PriceBook | None:
    said = len(problems)
    try:
        document: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"OTPSVC_PRICES_FILE: not TOML: {exc}")
        return None
    if currency is None:
        problems.append("OTPSVC_CURRENCY: required with OTPSVC_PRICES_FILE (ISO 4217, e.g. EUR)")
    stated = document.pop("currency", None)
    if stated is not None and stated != currency:
        problems.append(f"OTPSVC_PRICES_FILE: currency {stated!r} is not OTPSVC_CURRENCY")
    table: dict[tuple[str, str], dict[str, int]] = {}
    for provider, channels in document.items():
        if provider not in PROVIDERS:
            problems.append(f"OTPSVC_PRICES_FILE: {provider}: not a provider")
            continue
        if not isinstance(channels, dict):
            problems.append(f"OTPSVC_PRICES_FILE: {provider}: must be a table of channels")
            continue
        for channel, prices in channels.items():
            where = f"OTPSVC_PRICES_FILE: {provider}.{channel}"
            if channel not in CHANNELS or not isinstance(prices, dict):
                problems.append(f"{where}: a channel is voice or sms, a table of prices")
                continue
            table[(provider, channel)] = _prices(where, prices, problems)
    if len(problems) > said or currency is None:
        return None
    return PriceBook(currency, table)


def _prices(where: str, prices: Mapping[str, Any], problems: list[str]) -> dict[str, int]:
    found: dict[str, int] = {}
    for key, value in prices.items():
        if key != "default" and not PREFIX.match(key):
            problems.append(f'{where}."{key}": a key is default or a number prefix of digits')
            continue
        try:
            found["" if key == "default" else key] = parse_amount(value)
        except BadAmount as exc:
            problems.append(f'{where}."{key}": {exc}')
    if "" not in found:
        problems.append(f"{where}: needs a default price")
    return found


def coverage_problems(book: PriceBook, sends: Iterable[tuple[str, str]]) -> list[str]:
    """Every (provider, channel) a deployment may send by must have its prices."""
    return [
        f"OTPSVC_PRICES_FILE: no prices for {provider}.{channel}, which may send"
        for provider, channel in sorted(set(sends))
        if (provider, channel) not in book.table
    ]
