"""The client file (``OTPSVC_CLIENTS_FILE``): one TOML table per API client.

One otpsvc serves several apps; each may have its own brand, code length, TTL, attempts, modes,
countries, routes, locale, request limits, call velocities, a call budget of its own, its event
webhook, its test numbers and its spoken scripts. A key of a client's table is the global
setting's name without ``OTPSVC_``, in lower case, with TOML types::

    [clients.admin]
    code_length = 8
    code_ttl = 120
    modes = ["keypress"]
    allowed_countries = ["NG"]
    velocity_phone = "3 per hour"

What a table leaves out falls back to the global setting. A client's settings are the global
environment with its table laid over it, loaded and checked by the same code as the global ones
(:func:`~otpsvc.config.loading.load_settings`), so one vocabulary and one set of checks serve
both; a problem is named by its TOML path (``clients.admin.code_length``). Secrets stay out of the
file: API keys and webhook secrets come from the environment or ``*_FILE``, matched by name.

``[templates.LOCALE]`` and ``[clients.NAME.templates.LOCALE]`` hold the spoken scripts (see
:mod:`otpsvc.voice.templates`).
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from otpsvc.config.checks import ceiling_problems
from otpsvc.config.model import Settings
from otpsvc.config.model import variable as setting_variable
from otpsvc.errors import ConfigError
from otpsvc.voice.templates import fit_problems, locale_problem, template_problems

#: What a client's table may set, and the kind of TOML value each takes.
CLIENT_KEYS: dict[str, str] = {
    "brand": "string",
    "request_brand": "boolean",
    "code_length": "integer",
    "code_ttl": "integer",
    "max_check_attempts": "integer",
    "resend_cooldown": "integer",
    "max_sends": "integer",
    "modes": "list",
    "ladder": "string",
    "allowed_countries": "list",
    "allowed_countries_voice": "list",
    "allowed_countries_sms": "list",
    "allowed_number_types": "list",
    "routes": "routes",
    "default_locale": "string",
    "call_repeats": "integer",
    "rate_limit_start_ip": "string",
    "rate_limit_check_ip": "string",
    "rate_limit_client": "string",
    "velocity_phone": "string",
    "velocity_user": "string",
    "velocity_ip": "string",
    "velocity_prefix": "string",
    "velocity_country": "string",
    "velocity_client": "string",
    "call_budget": "string",
    "budget": "string",
    "fraud_mode": "string",
    "event_webhook": "string",
    "test_numbers": "list",
    "caller": "string",
    "end_user_id_header": "string",
    "end_user_addresses_max": "integer",
}
#: The variable a key sets where it is not simply ``OTPSVC_`` + the key in upper case.
VARIABLES = {"event_webhook": "OTPSVC_EVENT_WEBHOOKS"}
#: Keys that would hold a secret: they belong in the environment.
SECRETS = {
    "api_key": "OTPSVC_API_KEYS",
    "api_keys": "OTPSVC_API_KEYS",
    "event_webhook_secret": "OTPSVC_EVENT_WEBHOOK_SECRETS",
    "event_webhook_secrets": "OTPSVC_EVENT_WEBHOOK_SECRETS",
    "secret_key": "OTPSVC_SECRET_KEY",
}
TEMPLATE_KINDS = ("code", "keypress", "match", "sms")
LOCALE = re.compile(r"\A[a-z]{2}\Z")
CLIENT_NAME = re.compile(r"\A[A-Za-z0-9_.-]{1,32}\Z")

#: The client file's text as the gunicorn master last accepted it (see ``gunicorn.conf.py``):
#: workers forked after a reload read this, so a bad file never reaches them.
accepted_text: str | None = None


@dataclass(frozen=True)
class ClientFile:
    #: Per client, its table without its templates.
    tables: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: Per client ("" for the global defaults), per locale, per kind, the template text.
    templates: Mapping[str, Mapping[str, Mapping[str, str]]] = field(default_factory=dict)


def variable(key: str) -> str:
    return VARIABLES.get(key) or setting_variable(key)


def read_client_file(path: str, clients: set[str], problems: list[str]) -> ClientFile | None:
    """The file's tables, checked for shape (known clients, known keys, TOML types); what each
    value means is checked when the client's settings load. None when it cannot be read."""
    text = read_setting_file(path, accepted_text, "OTPSVC_CLIENTS_FILE", problems)
    return None if text is None else parse_client_file(text, clients, problems)


def read_setting_file(
    path: str, accepted: str | None, variable: str, problems: list[str]
) -> str | None:
    """A settings file's text: as the gunicorn master last accepted it (``accepted``), or read
    now; None, with a problem naming ``variable``, when it cannot be read."""
    if accepted is not None:
        return accepted
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as exc:
        problems.append(f"{variable}: cannot read {path}: {exc.strerror}")
        return None


def parse_client_file(text: str, clients: set[str], problems: list[str]) -> ClientFile | None:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"OTPSVC_CLIENTS_FILE: not valid TOML: {exc}")
        return None
    for key in document:
        if key not in ("clients", "templates"):
            problems.append(f"{key}: unknown table (the file has [clients.NAME] and [templates])")
    templates: dict[str, dict[str, dict[str, str]]] = {}
    if "templates" in document:
        templates[""] = _templates(document["templates"], "templates", problems)
    tables: dict[str, dict[str, Any]] = {}
    raw_clients = document.get("clients", {})
    if not isinstance(raw_clients, dict):
        problems.append("clients: must be a table of [clients.NAME] tables")
        raw_clients = {}
    for name, table in raw_clients.items():
        path = f"clients.{name}"
        if not isinstance(table, dict):
            problems.append(f"{path}: must be a table")
            continue
        if not CLIENT_NAME.match(name) or name not in clients:
            problems.append(f"{path}: {name!r} is not a client of OTPSVC_API_KEYS")
            continue
        own: dict[str, Any] = {}
        for key, value in table.items():
            if key == "templates":
                templates[name] = _templates(value, f"{path}.templates", problems)
                continue
            problem = _value_problem(key, value)
            if problem:
                problems.append(f"{path}.{key}: {problem}")
            else:
                own[key] = value
        tables[name] = own
    return ClientFile(tables, templates)


def _value_problem(key: str, value: Any) -> str | None:
    if key in SECRETS:
        return f"secrets stay out of this file: set {SECRETS[key]} (or its _FILE)"
    kind = CLIENT_KEYS.get(key)
    if kind is None:
        return "unknown key"
    if kind == "integer" and (not isinstance(value, int) or isinstance(value, bool)):
        return "must be an integer"
    if kind == "boolean" and not isinstance(value, bool):
        return "must be true or false"
    if kind == "string" and not isinstance(value, str):
        return "must be a string"
    if kind == "list" and not (
        isinstance(value, list) and all(isinstance(item, str) for item in value)
    ):
        return "must be a list of strings"
    if kind == "routes" and not (
        isinstance(value, dict)
        and all(
            isinstance(names, list) and all(isinstance(n, str) for n in names)
            for names in value.values()
        )
    ):
        return 'must be a table of calling code = ["provider", ...]'
    return None


def _templates(value: Any, path: str, problems: list[str]) -> dict[str, dict[str, str]]:
    if not isinstance(value, dict):
        problems.append(f"{path}: must be a table of [{path}.LOCALE] tables")
        return {}
    found: dict[str, dict[str, str]] = {}
    for locale, kinds in value.items():
        where = f"{path}.{locale}"
        if not LOCALE.match(locale):
            problems.append(f"{where}: the locale must be a two-letter language code")
            continue
        if not isinstance(kinds, dict):
            problems.append(f"{where}: must be a table with code, keypress, match or sms")
            continue
        for kind, text in kinds.items():
            if kind not in TEMPLATE_KINDS:
                problems.append(f"{where}.{kind}: unknown key (code, keypress, match or sms)")
            elif not isinstance(text, str):
                problems.append(f"{where}.{kind}: must be a string")
            else:
                found.setdefault(locale, {})[kind] = text
    return found


#: Settings every client shares, whatever its table says: the global ceilings over every
#: client's calls (left unset, they are derived from the global shares, not the client's).
SHARED = ("velocity_phone_all", "velocity_prefix_all", "velocity_country_all")


def overlay(
    settings: Settings, env: Mapping[str, Any], client: str, table: Mapping[str, Any]
) -> dict[str, Any]:
    """The global environment with the client's table laid over it, as the variables' text."""
    layered = {k: v for k, v in env.items() if k != "OTPSVC_CLIENTS_FILE"}
    for name in SHARED:
        layered[setting_variable(name)] = getattr(settings, name)
    for key, value in table.items():
        name = variable(key)
        if key == "event_webhook":
            others = [
                entry
                for entry in str(env.get(name, "")).split(";")
                if entry.strip() and entry.split("=", 1)[0].strip() != client
            ]
            layered[name] = ";".join([*others, f"{client}={value}"])
        elif key == "test_numbers":
            scoped = [f"{client}:{entry}" for entry in value]
            layered[name] = ",".join([*filter(None, [str(env.get(name, ""))]), *scoped])
        elif key == "routes":
            layered[name] = ";".join(f"{code}={','.join(names)}" for code, names in value.items())
        elif isinstance(value, bool):
            layered[name] = "true" if value else "false"
        elif isinstance(value, list):
            layered[name] = ",".join(value)
        else:
            layered[name] = str(value)
    return layered


def rename(problem: str, client: str, table: Mapping[str, Any]) -> str:
    """A problem of a client's settings, named by the TOML path of the key that caused it."""
    renamed = problem
    for key in table:
        renamed = re.sub(rf"\b{variable(key)}\b", f"clients.{client}.{key}", renamed)
    return renamed if renamed.startswith("clients.") else f"clients.{client}: {renamed}"


def template_problems_of(
    file: ClientFile, client_settings: Mapping[str, Settings], settings: Settings
) -> list[str]:
    """Every template checked: a locale with built-in digits, known placeholders, ``{code}``
    in a code template, and a rendered length that fits every provider that may speak it."""
    problems = []
    for owner, locales in file.templates.items():
        path = f"clients.{owner}.templates" if owner else "templates"
        own = client_settings.get(owner, settings)
        providers = own.all_providers if owner else settings.all_providers
        for locale, kinds in locales.items():
            problem = locale_problem(locale)
            if problem:
                problems.append(f"{path}.{locale}: {problem}")
                continue
            for kind, text in kinds.items():
                found = template_problems(kind, text) or fit_problems(kind, locale, text, providers)
                problems += [f"{path}.{locale}.{kind}: {message}" for message in found]
    return problems


def with_clients(
    settings: Settings, client_settings: Mapping[str, Settings], file: ClientFile
) -> Settings:
    """The global settings with each client's, and with what the clients add for everyone to
    see: their event webhooks, their test numbers (a number listed twice is a problem) and the
    providers their routes name."""
    webhooks = dict(settings.event_webhooks)
    numbers = list(settings.test_numbers)
    # A provider only a client's routes name is set up (and checked) by its settings' load.
    providers = dict(settings.provider_settings)
    problems = []
    warnings = list(settings.warnings)
    for name, own in client_settings.items():
        if "velocity_client" in file.tables[name]:
            # Above the budget of every client together, this client alone could spend it for
            # all: said, as for the environment's own velocity_client.
            shares = {"velocity_client": own.velocity_client, "call_budget": settings.call_budget}
            warnings += [
                rename(warning, name, {"velocity_client": own.velocity_client})
                for warning in ceiling_problems(shares, (("velocity_client", "call_budget"),))
            ]
        for provider, values in own.provider_settings.items():
            providers.setdefault(provider, values)
        if "event_webhook" in file.tables[name]:
            webhooks[name] = own.event_webhooks[name]
        for number in own.test_numbers:
            if number.client != name or number in settings.test_numbers:
                continue
            if any(n.e164 == number.e164 for n in numbers):
                problems.append(f"clients.{name}.test_numbers: a number is listed twice")
            numbers.append(number)
    if problems:
        raise ConfigError(sorted(problems))
    return dataclasses.replace(
        settings,
        client_settings={
            name: dataclasses.replace(own, templates=file.templates)
            for name, own in client_settings.items()
        },
        client_keys={name: frozenset(table) for name, table in file.tables.items()},
        event_webhooks=webhooks,
        test_numbers=tuple(numbers),
        provider_settings=providers,
        templates=file.templates,
        warnings=tuple(warnings),
    )
