"""``otpsvc check-config``: the settings as the service loads them, every secret masked, and
whether Redis answers and keeps its data."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import click

from otpsvc.cli.common import load, redis_errors, store_parts

if TYPE_CHECKING:
    from otpsvc.config import Settings


@click.command("check-config")
@click.option("--no-redis", is_flag=True, help="Check the settings only; do not reach Redis.")
def check_config(no_redis: bool) -> None:
    """Validate the settings and print the effective ones, every secret masked; then reach
    Redis and say how it keeps its data.

    Exit status 0; 2 with one message per problem (the same list as at start-up); 1 when Redis
    cannot be reached (``--no-redis`` skips that, and says so). More: the docs' "Deploying"
    page.
    """
    from otpsvc.api.health import NO_PERSISTENCE

    settings = load()
    for name, value in describe(settings):
        click.echo(f"{name} = {value}")
    for name in settings.unknown:
        click.echo(f"warning: unknown setting {name} is ignored", err=True)
    for warning in settings.warnings:
        click.echo(f"warning: {warning}", err=True)
    if no_redis:
        click.echo("redis: not reached (--no-redis)")
        return
    _, store, _ = store_parts(settings)
    with redis_errors():
        store.ping()
        persistence = store.persistence()
    click.echo(f"redis: reachable, persistence {persistence or 'unknown'}")
    if persistence == "none":
        click.echo(f"warning: {NO_PERSISTENCE}", err=True)


#: A URL's password (``scheme://user:password@host...``, one host or several) and credentials in
#: its query (``?password=``, ``?token=``...).
URL_PASSWORD = re.compile(r"(://[^/@:]*:)[^@/]*@")
QUERY_SECRET = re.compile(r"([?&](?:password|passwd|pass|token|secret|key|api_key)=)[^&#]*", re.I)


def masked_url(url: str) -> str:
    """The URL with its password and any credential in its query as ``***``: works on URLs
    ``urlsplit`` cannot read (a Sentinel or Cluster URL with several hosts)."""
    return QUERY_SECRET.sub(r"\1***", URL_PASSWORD.sub(r"\1***@", url))


def _secret_summary(value: Any) -> str:
    """How a secret setting is shown: whether it is set, never what it is."""
    if not value:
        return "none"
    if isinstance(value, Mapping):
        return ", ".join(f"{name}: ***" for name in value)
    if isinstance(value, tuple):
        return f"*** ({len(value)} set)"
    return "*** (set)"


def describe(settings: Settings) -> list[tuple[str, str]]:
    """The effective settings as (variable, shown value); no secret is ever shown."""
    from otpsvc.config import NUMBER_TYPES, SECRET_SETTINGS, setting_variables
    from otpsvc.phones import mask_e164

    variables = setting_variables()
    variables.update(clients="OTPSVC_API_KEYS", provider_settings="provider settings")
    shown: list[tuple[str, str]] = []
    for item in dataclasses.fields(settings):
        if item.name in ("unknown", "warnings", "client_keys"):
            continue
        value = getattr(settings, item.name)
        if item.name == "client_settings":
            # Each client of the client file: what its table sets, as the client's own
            # settings show it (so masked as the globals are).
            for name, own in value.items():
                keys = settings.client_keys[name] | {"templates"} & set(settings.templates)
                shown += [
                    (f"clients.{name}.{key.removeprefix('OTPSVC_').lower()}", text)
                    for key, text in describe(own)
                    if key.removeprefix("OTPSVC_").lower() in _described(keys)
                ]
            continue
        if item.name == "templates":
            text = ", ".join(
                f"{owner or 'every client'}: {','.join(sorted(locales))}"
                for owner, locales in value.items()
            )
            shown.append(("templates", text or "built-in"))
            continue
        variable = variables.get(item.name, "")
        if item.name == "redis_url":
            text = masked_url(value)
        elif item.name == "event_webhooks":
            text = ", ".join(f"{name}: {masked_url(url)}" for name, url in value.items()) or "none"
        elif variable in SECRET_SETTINGS and item.name not in ("clients", "test_numbers"):
            text = _secret_summary(value)
        elif item.name == "clients":
            text = ", ".join(f"{c.name} ({len(c.key_digests)} key(s))" for c in value)
        elif item.name == "test_numbers":
            text = ", ".join(f"{mask_e164(n.e164)} until {n.last_day}" for n in value) or "none"
        elif item.name == "prices":
            text = "none" if value is None else f"{len(value.table)} price tables"
        elif item.name == "provider_settings":
            text = ", ".join(f"{name}: {_public(s)}" for name, s in value.items()) or "none"
        elif item.name == "allowed_countries":
            text = "any" if value is None else ",".join(sorted(value))
        elif item.name in ("allowed_countries_voice", "allowed_countries_sms"):
            text = "as OTPSVC_ALLOWED_COUNTRIES" if value is None else ",".join(sorted(value))
        elif item.name == "allowed_number_types":
            text = ",".join(sorted(n for n, v in NUMBER_TYPES.items() if v in value))
        elif item.name == "argon2":
            text = (
                f"memory {value.memory_kib} KiB, time {value.time_cost}, lanes {value.parallelism}"
            )
        elif item.name == "routes":
            text = ";".join(f"{code}={','.join(p)}" for code, p in value.items()) or "none"
        else:
            text = (
                ",".join(map(str, sorted(value) if isinstance(value, frozenset) else value))
                if isinstance(value, tuple | frozenset)
                else str(value)
            )
        shown.append((variables.get(item.name) or item.name, text))
    return shown


def _described(keys: set[str] | frozenset[str]) -> set[str]:
    """The names ``describe`` shows a client file's keys under."""
    return {{"event_webhook": "event_webhooks"}.get(key, key) for key in keys}


def _public(provider_settings: Any) -> str:
    """A provider's settings without its secrets: only fields whose names say they are public."""
    if not dataclasses.is_dataclass(provider_settings):
        return "set"
    secret_words = ("key", "secret", "token", "password")
    public = {
        f.name: getattr(provider_settings, f.name)
        for f in dataclasses.fields(provider_settings)
        if not any(word in f.name for word in secret_words)
    }
    return "{" + ", ".join(f"{k}={v}" for k, v in public.items()) + "}"
