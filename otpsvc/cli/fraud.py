"""``otpsvc fraud``: the conversion rule's suspensions (status, lift) and its safe list. Each
change is an audit line naming the OS user who ran it. More: the docs' "Toll fraud and
pumping" page."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import click

from otpsvc.cli.common import audit_to_stderr, load, operator_name, redis_errors, store_parts

if TYPE_CHECKING:
    from otpsvc.config import Settings
    from otpsvc.store.conversion import ConversionStore


@click.group()
def fraud() -> None:
    """The conversion rule: which destinations are suspended, lifting one, the safe list.
    More: the docs' "Toll fraud and pumping" page."""


def _conversion(settings: Settings) -> ConversionStore:
    from otpsvc.core.fraud import conversion_for

    client, _, _ = store_parts(settings)
    store = conversion_for(settings, client)
    if store is None:
        raise click.ClickException("the conversion rule is off (OTPSVC_FRAUD_MODE=off)")
    return store


def _utc(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


@fraud.command()
@click.option("--json", "as_json", is_flag=True, help="As JSON (times in Unix ms).")
def status(as_json: bool) -> None:
    """The suspensions in force: destination, channel, whose, why (sends entered of sends
    settled in the window), since, until, repeat. More: the docs' "Toll fraud and pumping"
    page."""
    settings = load()
    with redis_errors():
        found = _conversion(settings).suspensions(int(time.time() * 1000))
    if as_json:
        click.echo(json.dumps([s.as_dict() for s in found]))
        return
    if not found:
        click.echo("no suspensions")
    for s in found:
        whose = s.client or "every client" + (f" but {','.join(s.exempt)}" if s.exempt else "")
        click.echo(
            f"{s.destination}  {s.channel}  {whose}  {s.approved} of {s.sends} entered  "
            f"since {_utc(s.since_ms)}  until {_utc(s.until_ms)}  (suspension {s.level})"
        )


@fraud.command()
@click.argument("destination")
@click.option("--channel", type=click.Choice(["voice", "sms"]), default=None, help="One only.")
@click.option("--client", "api_client", default=None, help="This client's suspension only.")
def lift(destination: str, channel: str | None, api_client: str | None) -> None:
    """Lift the suspensions of DESTINATION (a prefix, +234803, or a country, NG), audited; its
    evidence in the window is cleared, so it is judged afresh. More: the docs' "Toll fraud and
    pumping" page."""
    from otpsvc.core.audit import audit
    from otpsvc.store.conversion import destination_target

    audit_to_stderr()
    settings = load()
    with redis_errors():
        lifted = _conversion(settings).lift(
            destination_target(destination),
            int(time.time() * 1000),
            channel=channel,
            client=api_client,
        )
    for s in lifted:
        audit(
            "fraud_lift",
            destination=s.destination,
            channel=s.channel,
            rule=s.rule,
            client=s.client,
            by=operator_name(),
        )
    if not lifted:
        raise click.ClickException(f"no suspension of {destination} in force")
    click.echo(f"lifted {len(lifted)} suspension(s) of {destination}")


@fraud.group()
def safe() -> None:
    """Numbers the rule never refuses (kept as keyed hashes, each with an expiry). More: the
    docs' "Toll fraud and pumping" page."""


def _safe_key(phone: str, settings: Settings) -> tuple[str, str]:
    from otpsvc.core.keyring import Keyring
    from otpsvc.phones import InvalidPhone, parse_phone

    try:
        parsed = parse_phone(phone)
    except InvalidPhone as exc:
        raise click.BadParameter(str(exc), param_hint="PHONE") from exc
    keyring = Keyring(settings.secret_key, settings.argon2, settings.secret_key_fallbacks)
    return keyring.subject_key("safe", parsed.e164), parsed.masked


@safe.command("add")
@click.argument("phone")
@click.option("--days", type=click.IntRange(1, 365), default=30, show_default=True)
def safe_add(phone: str, days: int) -> None:
    """Put PHONE on the safe list for --days (audited). More: the docs' "Toll fraud and
    pumping" page."""
    from otpsvc.core.audit import audit

    audit_to_stderr()
    settings = load()
    key, masked = _safe_key(phone, settings)
    with redis_errors():
        _conversion(settings).add_safe(key, days * 86400)
    audit("fraud_safe_add", phone=masked, days=days, by=operator_name())
    click.echo(f"{masked} is safe for {days} days")


@safe.command("remove")
@click.argument("phone")
def safe_remove(phone: str) -> None:
    """Take PHONE off the safe list (audited). More: the docs' "Toll fraud and pumping"
    page."""
    from otpsvc.core.audit import audit

    audit_to_stderr()
    settings = load()
    key, masked = _safe_key(phone, settings)
    with redis_errors():
        removed = _conversion(settings).remove_safe(key)
    audit("fraud_safe_remove", phone=masked, removed=removed, by=operator_name())
    click.echo(f"{masked}: {'removed' if removed else 'was not on the safe list'}")


@safe.command("show")
@click.argument("phone")
def safe_show(phone: str) -> None:
    """Whether PHONE is on the safe list, and for how long. More: the docs' "Toll fraud and
    pumping" page."""
    settings = load()
    key, masked = _safe_key(phone, settings)
    with redis_errors():
        left = _conversion(settings).is_safe(key)
    click.echo(f"{masked}: safe for {left // 86400} more days" if left else f"{masked}: not safe")
