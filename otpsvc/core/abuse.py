"""Toll-fraud and abuse screening of a start, before anything is stored or any call is placed.

Voice calls are where toll fraud pays (IRSF): a stranger who can make this service call premium or
far-away numbers earns money on the operator's bill, and one who can make it call one number again
and again harasses a person. So a start is screened by country and number type, then counted
against velocity limits per number, client, end-user IP, end-user account, number prefix and
country, and against the global call budget. All of them refuse before a provider is asked for
anything.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from otpsvc import metrics
from otpsvc.config import Settings
from otpsvc.core.audit import audit
from otpsvc.errors import (
    CallsSuspended,
    CountryNotAllowed,
    NumberTypeNotAllowed,
    RateLimited,
    RetryLater,
    SpendBudgetExceeded,
)
from otpsvc.money import MoneyBudget, PriceBook, parse_budget
from otpsvc.phones import Phone
from otpsvc.store.velocity import Counter, Refusal, counters


@dataclass(frozen=True)
class AbusePolicy:
    calls_enabled: bool
    allowed_countries: frozenset[str] | None
    allowed_number_types: frozenset[int]
    per_phone: str
    per_client: str
    per_ip: str
    per_user: str
    per_prefix: str
    prefix_digits: int
    per_country: str
    budget: str
    all_phone: str
    all_prefix: str
    all_country: str
    #: A call budget of the client's own (from its table of the client file), beside the
    #: budget of every client together.
    own_budget: str | None = None
    #: The price file, and the budgets in money: every client's together and the client's own.
    prices: PriceBook | None = None
    spend: tuple[MoneyBudget, ...] = ()
    own_spend: tuple[MoneyBudget, ...] = ()
    #: As configured, for a refusal's message ("50.00 per day").
    spend_text: str = ""
    own_spend_text: str = ""
    #: Where each channel may go, narrower than ``allowed_countries`` (None: as it).
    channel_countries: Mapping[str, frozenset[str] | None] = dataclasses.field(default_factory=dict)
    #: The conversion rule's mode for this client (monitor, enforce, off), and the digits after
    #: the calling code that make a prefix (everyone's).
    fraud_mode: str = "monitor"
    fraud_digits: int = 3

    @classmethod
    def from_settings(cls, s: Settings) -> AbusePolicy:
        return cls(
            calls_enabled=s.calls_enabled,
            allowed_countries=s.allowed_countries,
            channel_countries={
                "voice": s.allowed_countries_voice,
                "sms": s.allowed_countries_sms,
            },
            allowed_number_types=s.allowed_number_types,
            per_phone=s.velocity_phone,
            per_client=s.velocity_client,
            per_ip=s.velocity_ip,
            per_user=s.velocity_user,
            per_prefix=s.velocity_prefix,
            prefix_digits=s.velocity_prefix_digits,
            per_country=s.velocity_country,
            budget=s.call_budget,
            all_phone=s.velocity_phone_all,
            all_prefix=s.velocity_prefix_all,
            all_country=s.velocity_country_all,
            prices=s.prices,
            spend=parse_budget(s.budget) if s.budget else (),
            spend_text=s.budget or "",
            fraud_mode=s.fraud_mode,
            fraud_digits=s.fraud_prefix_digits,
        )

    @classmethod
    def for_client(cls, everyone: Settings, own: Settings, keys: frozenset[str]) -> AbusePolicy:
        """A client's screening and shares from its settings; the ceilings, the budget of every
        client together and the switch stay everyone's."""
        shared = cls.from_settings(everyone)
        return dataclasses.replace(
            cls.from_settings(own),
            calls_enabled=shared.calls_enabled,
            budget=shared.budget,
            all_phone=shared.all_phone,
            all_prefix=shared.all_prefix,
            all_country=shared.all_country,
            own_budget=own.call_budget if "call_budget" in keys else None,
            spend=shared.spend,
            spend_text=shared.spend_text,
            own_spend=parse_budget(own.budget) if "budget" in keys and own.budget else (),
            own_spend_text=own.budget if "budget" in keys and own.budget else "",
            fraud_digits=shared.fraud_digits,
        )

    def screen(self, phone: Phone, client: str, channel: str = "voice") -> None:
        """Refuse numbers no call (or, for ``channel`` sms, no SMS) may go to; no state is
        touched."""
        if not self.calls_enabled:
            audit("fraud_block", client=client, phone=phone.masked, reason="calls_disabled")
            metrics.REFUSALS.labels(metrics.client_label(client), "kill_switch").inc()
            raise CallsSuspended(60, "calls are switched off (OTPSVC_CALLS_ENABLED)")
        what = "SMS" if channel == "sms" else "calls"
        for allowed in (self.allowed_countries, self.channel_countries.get(channel)):
            if allowed is not None and phone.region not in allowed:
                audit("fraud_block", client=client, phone=phone.masked, reason="country")
                metrics.REFUSALS.labels(metrics.client_label(client), "country").inc()
                raise CountryNotAllowed(
                    f"{what} to {phone.region or 'this country'} are not allowed"
                )
        if phone.number_type not in self.allowed_number_types:
            audit("fraud_block", client=client, phone=phone.masked, reason="number_type")
            metrics.REFUSALS.labels(metrics.client_label(client), "number_type").inc()
            raise NumberTypeNotAllowed(
                {"phone": ["this type of number (for example premium-rate) cannot be called"]},
                "this type of number cannot be called",
            )

    def counters(
        self,
        *,
        phone: Phone,
        phone_key: str,
        client: str,
        ip: str,
        user_key: str | None,
        keyed: Callable[[str, str], str],
    ) -> list[Counter]:
        """Every limit one call counts against.

        Whatever one client's calls can fill is counted per client (its share: ``phone``,
        ``prefix``, ``country``, ``client``), so that no client can spend another's calls; the
        number, its prefix and its country also count for every client together against a
        ceiling sized above any one share (``phone_all``, ``prefix_all``, ``country_all``,
        ``budget``), the toll-fraud backstop. What the client itself supplies (the end user's
        IP and account id) is counted per client only: another client's value is another
        person's.

        The number, its prefix, the end user's IP network and account id appear only as keyed
        hashes (``keyed(kind, value)``; the account's, ``user_key``, comes keyed already): a
        Redis dump gives none of them back."""
        national = phone.e164[len(f"+{phone.country_code}") :]
        prefix = keyed("prefix", f"{phone.country_code}-{national[: self.prefix_digits]}")
        country = str(phone.country_code)
        user = user_key
        return [
            *counters("phone", f"{client}:{phone_key}", self.per_phone),
            *counters("client", client, self.per_client),
            *counters("ip", f"{client}:{keyed('ip', ip)}", self.per_ip),
            *(counters("user", user, self.per_user) if user else []),
            *counters("prefix", f"{client}:{prefix}", self.per_prefix),
            *counters("country", f"{client}:{country}", self.per_country),
            *counters("phone_all", phone_key, self.all_phone),
            *counters("prefix_all", prefix, self.all_prefix),
            *counters("country_all", country, self.all_country),
            *self.budget_counters(client),
        ]

    @property
    def currency(self) -> str:
        return self.prices.currency if self.prices else ""

    def quote(self, provider: str, channel: str, phone: Phone) -> int | None:
        """What one send costs by the price file (micro-units); None without one."""
        return None if self.prices is None else self.prices.quote(provider, channel, phone.e164)

    def money_counters(self, client: str, amount: int | None, now_ms: int) -> list[Counter]:
        """The budgets in money one send of ``amount`` counts against (this calendar period's
        of each): every client's together, and the client's own."""
        if not amount:
            return []
        found = []
        for kind, who, budgets in (
            ("spend", "all", self.spend),
            ("client_spend", client, self.own_spend),
        ):
            for budget in budgets:
                bucket, left_ms = budget.bucket(now_ms)
                seconds = -(-left_ms // 1000)
                found.append(Counter(kind, f"{who}:{bucket}", budget.limit, seconds, amount))
        return found

    def budget_counters(self, client: str) -> list[Counter]:
        """The call budgets alone (every client's together, and the client's own when it has
        one): every further provider request of a failover counts here."""
        own = counters("client_budget", client, self.own_budget) if self.own_budget else []
        return [*counters("budget", "all", self.budget), *own]


#: What a refused call's limit counts, for its message: a share is this client's alone, a
#: ceiling every client's together.
LIMIT_TARGETS = {
    "phone": "this number",
    "client": "this API client",
    "ip": "this end-user IP",
    "user": "this end user",
    "prefix": "this number prefix",
    "country": "this country",
}


#: The refusals that are no velocity share or ceiling: the error, its detail, the limit and its
#: scope.
SWITCHES: dict[str, tuple[type[RateLimited] | type[CallsSuspended], str, str, str]] = {
    "kill": (
        CallsSuspended,
        "calls are suspended by an operator (otpsvc calls suspend)",
        "kill_switch",
        "global",
    ),
    "client_kill": (
        CallsSuspended,
        "this client's calls are suspended by an operator (otpsvc calls suspend --client)",
        "kill_switch",
        "client",
    ),
    "client_budget": (
        RateLimited,
        "this client's own call budget is spent",
        "call_budget",
        "client",
    ),
    "budget": (
        CallsSuspended,
        "calls are suspended: the call budget of every client together is spent",
        "call_budget",
        "global",
    ),
}


#: The refusal reasons of what is not a velocity limit (the rest are ``velocity_<kind>``).
REASONS = {
    "kill": "kill_switch",
    "client_kill": "kill_switch_client",
    "spend": "spend_budget",
    "client_spend": "spend_budget_client",
}


def refusal_error(
    refusal: Refusal, phone: Phone, client: str, abuse: AbusePolicy | None = None
) -> RetryLater:
    """The error a velocity or budget refusal becomes, after it is audited. It names the limit
    and whether it was this client's share or the ceiling of every client together, and says
    nothing else about other clients."""
    reason = REASONS.get(refusal.kind) or f"velocity_{refusal.kind}"
    audit("fraud_block", client=client, phone=phone.masked, reason=reason)
    metrics.REFUSALS.labels(metrics.client_label(client), reason).inc()
    if refusal.kind in ("spend", "client_spend") and abuse is not None:
        return _spend_error(refusal, abuse)
    if refusal.kind in SWITCHES:
        error, detail, limit, scope = SWITCHES[refusal.kind]
        return error(refusal.retry_after, detail, limit=limit, scope=scope)
    target = refusal.kind.removesuffix("_all")
    if refusal.kind.endswith("_all"):
        detail = f"too many calls for {LIMIT_TARGETS[target]} from all clients together"
        return RateLimited(
            refusal.retry_after, detail, limit=f"velocity_{refusal.kind}", scope="global"
        )
    detail = f"too many calls for {LIMIT_TARGETS[target]} from this client"
    return RateLimited(refusal.retry_after, detail, limit=f"velocity_{target}", scope="client")


def _spend_error(refusal: Refusal, abuse: AbusePolicy) -> SpendBudgetExceeded:
    own = refusal.kind == "client_spend"
    budget = abuse.own_spend_text if own else abuse.spend_text
    currency = abuse.currency
    whose = "this client's own budget" if own else "the budget of every client together"
    return SpendBudgetExceeded(
        refusal.retry_after,
        f"this send's price would overspend {whose} ({budget}, {currency})",
        budget=budget,
        currency=currency,
        scope="client" if own else "global",
    )
