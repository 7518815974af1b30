"""The conversion rule at a start (see docs/fraud.md and :mod:`otpsvc.store.conversion`).

A send's gates are its number's safe-list entry and the four suspensions that may apply to it:
its prefix and its country on its channel, for its client and for every client. The velocity
script reads them in the round trip it makes anyway. In ``enforce`` mode a suspension refuses
the send (``429 prefix_suspended``, or the ladder stops with it); in ``monitor`` mode the send
is placed and the decision reported: ``otpsvc_fraud_would_block_total``, an audit line and the
event ``fraud.would_block``.
"""

from __future__ import annotations

from otpsvc import metrics
from otpsvc.config import Settings
from otpsvc.core.abuse import AbusePolicy, refusal_error
from otpsvc.core.audit import audit
from otpsvc.core.draft import Draft
from otpsvc.errors import PrefixSuspended
from otpsvc.phones import Phone
from otpsvc.store.connection import RedisClient
from otpsvc.store.conversion import ConversionStore, RuleSettings, target_names
from otpsvc.store.velocity import Refusal, RuleGates

#: What each rule suspended, for a refusal's message.
WHAT = {
    "prefix": "this number range",
    "country": "this country",
    "prefix_all": "this number range",
    "country_all": "this country",
}


def destination(phone: Phone, abuse: AbusePolicy) -> str:
    """The number's prefix as the rule and the funnel name it: the calling code and
    ``OTPSVC_FRAUD_PREFIX_DIGITS`` digits (``+234803``)."""
    return f"+{phone.country_code}{phone.range_digits(abuse.fraud_digits)}"


def rule_gates(
    conversion: ConversionStore | None, draft: Draft, *, number_key: str
) -> RuleGates | None:
    """The send's gates (``number_key``: the number's keyed hash for the safe list); None when
    the rule is off for its client."""
    abuse, client, phone, channel = draft.abuse, draft.ask.client, draft.ask.phone, draft.channel
    if conversion is None or abuse.fraud_mode == "off":
        return None
    targets = target_names(
        phone.country_code, phone.range_digits(abuse.fraud_digits), phone.region or ""
    )
    keys = conversion.gates(client, channel, targets, number_key)
    return RuleGates(tuple(keys), abuse.fraud_mode == "enforce", client)


def refusal_or_watch(refusal: Refusal, draft: Draft) -> str:
    """Raise the error a refusal of the velocity script becomes; unless it is the conversion
    rule in monitor mode, which only watched: then what the send's ``fraud.would_block`` event
    says."""
    client, phone, channel = draft.ask.client, draft.ask.phone, draft.channel
    if refusal.watched:
        return watched(refusal, client=client, phone=phone, channel=channel, abuse=draft.abuse)
    if refusal.kind.startswith("suspended_"):
        raise refused(refusal, client=client, phone=phone, channel=channel)
    raise refusal_error(refusal, phone, client, draft.abuse)


def watched(
    refusal: Refusal, *, client: str, phone: Phone, channel: str, abuse: AbusePolicy
) -> str:
    """Report a send that monitor mode lets through although a suspension applies; what the
    send's record and its ``fraud.would_block`` event say (``rule channel destination``)."""
    rule = refusal.kind.removeprefix("suspended_")
    where = destination(phone, abuse) if rule.startswith("prefix") else phone.region or ""
    metrics.FRAUD_WOULD_BLOCK.labels(rule, channel).inc()
    audit("fraud_would_block", client=client, phone=phone.masked, rule=rule, channel=channel)
    return f"{rule} {channel} {where}"


def refused(refusal: Refusal, *, client: str, phone: Phone, channel: str) -> PrefixSuspended:
    """The error a suspension that refused a send becomes, after it is audited and counted."""
    rule = refusal.kind.removeprefix("suspended_")
    audit(
        "fraud_block",
        client=client,
        phone=phone.masked,
        reason="prefix_suspended",
        rule=rule,
        channel=channel,
    )
    metrics.REFUSALS.labels(metrics.client_label(client), "prefix_suspended").inc()
    metrics.FRAUD_BLOCKED.labels(rule, channel).inc()
    what = "SMS" if channel == "sms" else "calls"
    whose = " from all clients" if rule.endswith("_all") else ""
    return PrefixSuspended(
        refusal.retry_after,
        f"{what} to {WHAT[rule]} are suspended: too few of the codes sent there{whose} "
        "were entered",
        rule=rule,
        channel=channel,
    )


def conversion_for(settings: Settings, client: RedisClient) -> ConversionStore | None:
    """The conversion rule's store; None when the rule is off for every client."""
    modes = {settings.fraud_mode, *(s.fraud_mode for s in settings.client_settings.values())}
    if modes == {"off"}:
        return None
    rule = RuleSettings(
        grace_ms=settings.fraud_grace * 1000,
        window_ms=settings.fraud_window * 1000,
        min_sends=settings.fraud_min_sends,
        min_conversion=settings.fraud_min_conversion,
        lengths_ms=tuple(n * 1000 for n in settings.fraud_suspensions),
    )
    return ConversionStore(client, settings.redis_prefix, rule)
