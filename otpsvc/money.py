"""Money, exactly: amounts are integers of micro-units of the deployment's currency (a millionth of
a euro, a naira...), parsed from and shown as decimal strings, never floats. A call's price
(a fraction of a cent) and a month's budget both fit.

Money budgets count calendar periods in UTC (the clock hour, the day, the month), as a bill
does; the call budgets count sliding windows.
"""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

#: Micro-units per unit of the currency.
SCALE = 1_000_000
AMOUNT = re.compile(r"\A[0-9]+(\.[0-9]{1,6})?\Z")
CURRENCY = re.compile(r"\A[A-Z]{3}\Z")
PERIODS = ("hour", "day", "month")
BUDGET_ITEM = re.compile(r"\A\s*([0-9]+(?:\.[0-9]{1,6})?)\s*(?:/|per)\s*(hour|day|month)\s*\Z")


class BadAmount(ValueError):
    pass


def parse_amount(text: str) -> int:
    """``"0.0120"`` -> 12000 micro-units. At most six decimals, never negative."""
    if not isinstance(text, str) or not AMOUNT.match(text.strip()):
        raise BadAmount(f'{text!r} is not an amount such as "0.0120" (at most 6 decimals)')
    try:
        return int(Decimal(text.strip()) * SCALE)
    except InvalidOperation as exc:  # pragma: no cover - the pattern admits only numbers
        raise BadAmount(f"{text!r} is not an amount") from exc


def to_micros(text: str) -> int:
    """A price as a provider reported it (``"0.045"``) in micro-units, rounded half up."""
    return int((Decimal(text) * SCALE).to_integral_value(ROUND_HALF_UP))


def show(micros: int) -> str:
    """12000 -> ``"0.012"``; whole and cent amounts keep two decimals (``"50.00"``)."""
    text = f"{Decimal(micros).scaleb(-6):f}".rstrip("0")
    whole, _, decimals = text.partition(".")
    return f"{whole}.{decimals.ljust(2, '0')}"


@dataclass(frozen=True)
class MoneyBudget:
    """One window of a money budget: ``limit`` micro-units per calendar ``period``."""

    limit: int
    period: str

    def bucket(self, now_ms: int) -> tuple[str, int]:
        """This period's name (part of its Redis key) and the ms until it ends."""
        if self.period == "hour":
            return f"h{now_ms // 3_600_000}", 3_600_000 - now_ms % 3_600_000
        if self.period == "day":
            return f"d{now_ms // 86_400_000}", 86_400_000 - now_ms % 86_400_000
        moment = time.gmtime(now_ms // 1000)
        year, month = moment.tm_year + moment.tm_mon // 12, moment.tm_mon % 12 + 1
        ends_ms = calendar.timegm((year, month, 1, 0, 0, 0)) * 1000
        return f"m{moment.tm_year}{moment.tm_mon:02d}", max(1, ends_ms - now_ms)


def parse_budget(text: str) -> tuple[MoneyBudget, ...]:
    """``"50.00 per day;1000 per month"`` -> its windows; periods hour, day or month."""
    windows = []
    for item in filter(str.strip, re.split(r"[;,]", text)):
        found = BUDGET_ITEM.match(item)
        if not found:
            raise BadAmount(
                f'{item.strip()!r} is not a budget such as "50.00 per day" (per hour, day or month)'
            )
        windows.append(MoneyBudget(parse_amount(found.group(1)), found.group(2)))
    if not windows:
        raise BadAmount("an empty budget")
    return tuple(windows)


@dataclass(frozen=True)
class PriceBook:
    currency: str
    #: (provider, channel) -> number prefix (digits; "" for the default) -> micro-units.
    table: Mapping[tuple[str, str], Mapping[str, int]] = field(default_factory=dict)

    def quote(self, provider: str, channel: str, e164: str) -> int | None:
        """What one send by ``provider`` on ``channel`` to the number costs (micro-units);
        None when the file has no price for the provider and channel."""
        prices = self.table.get((provider, "sms" if channel == "sms" else "voice"))
        if prices is None:
            return None
        digits = e164.lstrip("+")
        for length in range(min(len(digits), 15), 0, -1):
            found = prices.get(digits[:length])
            if found is not None:
                return found
        return prices.get("")
