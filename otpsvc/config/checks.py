"""Checks across settings: limits against their ceilings, voices, events, Redis TLS."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import limits
import phonenumbers
from standardwebhooks import Webhook

from otpsvc.config.model import RedisTls, variable
from otpsvc.config.secrets import webhook_secret_weakness
from otpsvc.voice.base import https_problem
from otpsvc.voice.scripts import choose_locale

#: Each limit one client's calls can fill, counted per client (the share), with the global
#: ceiling above it for every client together (the toll-fraud backstop). A ceiling left unset is
#: ``CEILING_FACTOR`` times the share.
SHARED_LIMITS = (
    ("velocity_phone", "velocity_phone_all"),
    ("velocity_prefix", "velocity_prefix_all"),
    ("velocity_country", "velocity_country_all"),
    ("velocity_client", "call_budget"),
)


CEILING_FACTOR = 3


def scaled_limit(spec: str, factor: int) -> str:
    """``5 per hour;10 per day`` times 3: ``15 per 1 hour;30 per 1 day``."""
    return ";".join(
        f"{item.amount * factor} per {item.multiples} {item.GRANULARITY.name}"
        for item in limits.parse_many(spec)
    )


def one_client_most(share: str, seconds: int) -> int:
    """The most calls a client's share lets it place in any window of ``seconds``."""
    items = limits.parse_many(share)
    return min(item.amount * max(1, -(-seconds // item.get_expiry())) for item in items)


def ceiling_problems(
    core: Mapping[str, Any], pairs: tuple[tuple[str, str], ...] = SHARED_LIMITS
) -> list[str]:
    """Ceilings that one client alone could fill: then that client could spend them for all."""
    problems = []
    for share, ceiling in pairs:
        if share not in core or ceiling not in core:
            continue
        for item in limits.parse_many(core[ceiling]):
            most = one_client_most(core[share], item.get_expiry())
            if item.amount <= most:
                problems.append(
                    f"{variable(ceiling)}: {item} is not above what one client's share "
                    f"({variable(share)}) may place in that time ({most}): one client could "
                    "spend it for every client"
                )
    return problems


def _route_languages(provider: str, core: Mapping[str, Any]) -> dict[str, list[str]]:
    """Script locale -> the countries (ISO 3166) whose calls the routes send to ``provider`` in
    that language when a start names no locale."""
    routes: Mapping[int, tuple[str, ...]] = core.get("routes", {})
    allowed: frozenset[str] | None = core.get("allowed_countries")
    regions: set[str] = set()
    for code, names in routes.items():
        if provider in names:
            regions.update(phonenumbers.region_codes_for_country_code(code))
    if provider in core.get("providers", ()) and allowed is not None:
        regions.update(r for r in allowed if phonenumbers.country_code_for_region(r) not in routes)
    if allowed is not None:
        regions &= allowed
    languages: dict[str, list[str]] = {}
    for region in sorted(regions):
        locale = choose_locale(None, region, core.get("default_locale", "en"))
        languages.setdefault(locale, []).append(region)
    return languages


def voice_problems(
    provider: str, voices: Mapping[str, str], core: Mapping[str, Any], variable: str
) -> list[str]:
    """A route that sends a language to ``provider`` for which it has no voice."""
    return [
        f"{variable}: the routes send {provider} calls in {locale!r} (to "
        f"{', '.join(regions)}) and it has no voice for {locale!r}; add {locale}=<voice>"
        for locale, regions in _route_languages(provider, core).items()
        if locale not in voices
    ]


def event_problems(core: Mapping[str, Any]) -> list[str]:
    """Webhooks only for known clients, each with a valid secret, each URL https (plain http
    only to a loopback address, or in dev mode)."""
    problems: list[str] = []
    clients = {c.name for c in core.get("clients", ())}
    secrets = core.get("event_webhook_secrets", {})
    for client, url in core.get("event_webhooks", {}).items():
        if client not in clients:
            problems.append(f"OTPSVC_EVENT_WEBHOOKS: {client!r} is not a client of OTPSVC_API_KEYS")
        if client not in secrets:
            problems.append(f"OTPSVC_EVENT_WEBHOOK_SECRETS: no secret for {client!r}")
        problem = https_problem(url, allow_http=bool(core.get("dev_mode")))
        if problem:
            problems.append(f"OTPSVC_EVENT_WEBHOOKS: {client}: {problem}")
    for client, each in secrets.items():
        for secret in each:
            try:
                Webhook(secret)
            except Exception:
                problems.append(
                    f"OTPSVC_EVENT_WEBHOOK_SECRETS: {client}: not a whsec_<base64> signing secret"
                )
                continue
            problem = webhook_secret_weakness(secret)
            if problem:
                problems.append(f"OTPSVC_EVENT_WEBHOOK_SECRETS: {client}: {problem}")
    return problems


def redis_tls_problems(core: Mapping[str, Any]) -> list[str]:
    """TLS files only with a TLS URL, each readable, a key with its certificate."""
    tls: RedisTls | None = core.get("redis_tls")
    if tls is None:
        return []
    named = {
        "OTPSVC_REDIS_TLS_CA_FILE": tls.ca_file,
        "OTPSVC_REDIS_TLS_CERT_FILE": tls.cert_file,
        "OTPSVC_REDIS_TLS_KEY_FILE": tls.key_file,
    }
    problems = [
        f"{name}: cannot read {path}"
        for name, path in named.items()
        if path and not os.access(path, os.R_OK)
    ]
    if any(named.values()) and not str(core.get("redis_url", "")).startswith("rediss"):
        problems.append(
            "OTPSVC_REDIS_TLS_*: set only with a TLS URL (rediss://, rediss+sentinel://, "
            "rediss+cluster://)"
        )
    if bool(tls.cert_file) != bool(tls.key_file):
        problems.append("OTPSVC_REDIS_TLS_CERT_FILE and OTPSVC_REDIS_TLS_KEY_FILE go together")
    return problems


def ladder_problems(core: Mapping[str, Any]) -> list[str]:
    """A ladder the resend rules or the code's life would cut short: each step is a resend, so
    it needs a send left; a step reached by its wait (not a failed call, which lifts the
    cooldown) must wait out the cooldown, which doubles after every call; and every step must
    be due while the code lives."""
    steps = core.get("ladder", ())
    problems = []
    if len(steps) > core["max_sends"]:
        problems.append(
            f"OTPSVC_LADDER: {len(steps)} steps, but OTPSVC_MAX_SENDS allows "
            f"{core['max_sends']} calls per verification"
        )
    due = 0
    for index, step in enumerate(steps[:-1]):
        due += step.after
        if due >= core["code_ttl"]:
            # The step would come after the code expired: nothing left to call about.
            problems.append(
                f"OTPSVC_LADDER: step {index + 2} is due {due} s after the start, but a code "
                f"lives {core['code_ttl']} s (OTPSVC_CODE_TTL): shorten the waits or lengthen "
                "the code's life"
            )
        cooldown = core["resend_cooldown"] * 2**index
        if step.after < cooldown:
            problems.append(
                f"OTPSVC_LADDER: step {index + 1} waits {step.after} s, but the resend cooldown "
                f"after call {index + 1} is {cooldown} s (OTPSVC_RESEND_COOLDOWN, doubling): "
                f"wait at least {cooldown}"
            )
    return problems
