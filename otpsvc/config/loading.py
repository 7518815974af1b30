"""Reading the settings: the environment (or a mapping) to one :class:`Settings`, or
one :class:`~otpsvc.errors.ConfigError` listing every problem."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import date, timedelta
from typing import Any

from marshmallow import EXCLUDE, ValidationError

from otpsvc.config.checks import (
    SHARED_LIMITS,
    ceiling_problems,
    event_problems,
    ladder_problems,
    redis_tls_problems,
    voice_problems,
)
from otpsvc.config.clients import (
    ClientFile,
    overlay,
    read_client_file,
    rename,
    template_problems_of,
    with_clients,
)
from otpsvc.config.model import Settings, named_providers
from otpsvc.config.prices import coverage_problems, read_price_file
from otpsvc.config.schema import SettingsSchema
from otpsvc.config.secrets import (
    GUESSABLE_SECRETS,
    MIN_API_KEY_BITS,
    PLACEHOLDER_MARKERS,
    SECRET_SETTINGS,
    read_secret_files,
    weakness,
)
from otpsvc.errors import ConfigError
from otpsvc.money import PriceBook
from otpsvc.voice.registry import PROVIDERS

#: Said by the API's processes (and check-config), not by a worker, whose metrics port is its own.
UNGUARDED_METRICS = (
    "OTPSVC_METRICS_TOKEN is not set: /metrics is open on the port that also takes provider "
    "webhooks from the internet; set a token, or keep /metrics off the ingress"
)


def _problems(messages: Any, prefix: str = "") -> list[str]:
    if isinstance(messages, dict):
        out: list[str] = []
        for key, value in messages.items():
            out += _problems(value, f"{key}: " if not prefix else f"{prefix}{key}: ")
        return out
    if isinstance(messages, list):
        return [f"{prefix}{m}" for m in messages if isinstance(m, str)] + [
            p for m in messages if not isinstance(m, str) for p in _problems(m, prefix)
        ]
    return [f"{prefix}{messages}"]


def _load_the_rest(relevant: Mapping[str, Any], failed: set[str]) -> dict[str, Any]:
    """The settings that did load, with every failing variable left out (its default stands in,
    and a missing required one stays missing), so that the checks across settings can still run
    on the rest: every problem is reported at once, not one round of fixes at a time."""
    rest = {name: value for name, value in relevant.items() if name not in failed}
    try:
        schema = SettingsSchema()
        required = tuple(name for name, item in schema.fields.items() if item.required)
        # Only the required settings may be missing; the others take their defaults.
        loaded: dict[str, Any] = schema.load(rest, unknown=EXCLUDE, partial=required)
    except (ValidationError, KeyError, ValueError):
        return {}
    return loaded


#: The setting that names the SMS sender of each provider that needs one.
SMS_SENDERS = {"termii": "OTPSVC_TERMII_SENDER", "alphasms": "OTPSVC_ALPHASMS_SENDER"}


def setting_variables() -> dict[str, str]:
    """Each setting's variable name, by the setting's attribute name."""
    return {name: str(f.data_key) for name, f in SettingsSchema().fields.items()}


#: The ``OTPSVC_*`` variables as the gunicorn master last accepted them, every ``*_FILE`` secret
#: already read into its value (see ``gunicorn.conf.py``): workers forked after a reload, or to
#: replace one that died, load exactly these, so a file broken since never reaches them.
accepted_environment: dict[str, str] | None = None


def environment() -> dict[str, str]:
    """The ``OTPSVC_*`` variables of the process environment (as the master accepted them,
    under ``otpsvc serve``)."""
    if accepted_environment is not None:
        return dict(accepted_environment)
    return {k: v for k, v in os.environ.items() if k.startswith("OTPSVC_")}


@dataclass
class _Loaded:
    """The core settings as far as they loaded, and which variables failed."""

    core: dict[str, Any]
    failed: set[str]

    def trusted(self, *variables: str) -> bool:
        """A check across settings runs only on settings that loaded: one that failed would
        stand in with its default and report a problem that is not there."""
        return bool(self.core) and not self.failed.intersection(variables)


def load_settings(source: Mapping[str, Any] | None = None) -> Settings:
    """Build the settings from ``source`` (default: the process environment). Every problem is
    reported at once: the core settings, each provider's, the checks across settings, the
    secrets, the test numbers, then the client file."""
    env = environment() if source is None else source
    problems: list[str] = []
    relevant = read_secret_files(
        {k: v for k, v in env.items() if k.startswith("OTPSVC_")}, problems
    )
    try:
        loaded = _Loaded(SettingsSchema().load(relevant, unknown=EXCLUDE), set())
    except ValidationError as exc:
        problems += _problems(exc.messages)
        failed = set(exc.messages)
        loaded = _Loaded(_load_the_rest(relevant, failed), failed)
    core = loaded.core
    provider_settings = _provider_settings(core, relevant, problems)
    prices = _price_book(loaded, problems)
    problems += _cross_problems(loaded, provider_settings)
    problems += _secret_problems(relevant)
    problems += _test_number_problems(loaded)
    warnings = _shared_limit_checks(loaded, problems)
    client_file: ClientFile | None = None
    file_problems: list[str] = []
    if core.get("clients_file") and loaded.trusted("OTPSVC_CLIENTS_FILE", "OTPSVC_API_KEYS"):
        clients = {c.name for c in core.get("clients", ())}
        client_file = read_client_file(core["clients_file"], clients, file_problems)
    if problems:
        raise ConfigError(sorted(problems + file_problems))
    unknown = tuple(sorted(set(relevant) - _known_variables() - {"OTPSVC_TEST_REDIS_URL"}))
    settings = Settings(
        provider_settings=provider_settings,
        unknown=unknown,
        warnings=tuple(warnings),
        prices=prices,
        **core,
    )
    if prices is not None and (uncovered := coverage_problems(prices, _sends(settings))):
        raise ConfigError(sorted(uncovered + file_problems))
    if client_file is None:
        if file_problems:
            raise ConfigError(sorted(file_problems))
        return _with_budget_warning(settings)
    return _with_budget_warning(_with_client_file(settings, relevant, client_file, file_problems))


def _with_budget_warning(settings: Settings) -> Settings:
    """A budget in money of every client together, with clients that have none of their own:
    any one of them can spend it and stop the others' calls. Said, not refused (one app, or
    apps that trust each other, may mean it)."""
    if not settings.budget or len(settings.clients) < 2:
        return settings
    open_to_all = sorted(
        c.name for c in settings.clients if "budget" not in settings.client_keys.get(c.name, ())
    )
    if not open_to_all:
        return settings
    warning = (
        "OTPSVC_BUDGET: no budget of its own (`budget` in the client file) for "
        f"{', '.join(open_to_all)}: any of them can spend the budget of every client and stop "
        "the others' calls"
    )
    return replace(settings, warnings=(*settings.warnings, warning))


def _price_book(loaded: _Loaded, problems: list[str]) -> PriceBook | None:
    """The price file, when one is set; a money budget needs one."""
    core = loaded.core
    if core.get("budget") and not core.get("prices_file"):
        problems.append(
            "OTPSVC_BUDGET: needs OTPSVC_PRICES_FILE (a budget in money counts each send's price)"
        )
    if not core.get("prices_file") or not loaded.trusted("OTPSVC_PRICES_FILE", "OTPSVC_CURRENCY"):
        return None
    return read_price_file(core["prices_file"], core.get("currency"), problems)


def _sends(settings: Settings) -> set[tuple[str, str]]:
    """Each (provider, channel) these settings may send by: the routes' providers by voice, and
    each ladder step's provider by its channel."""
    voice = named_providers(settings.providers, settings.routes, ())
    return {(name, "voice") for name in voice} | {
        (step.provider, step.channel) for step in settings.ladder
    }


def _provider_settings(
    core: dict[str, Any], relevant: Mapping[str, Any], problems: list[str]
) -> dict[str, Any]:
    """Each named provider's own settings, and whether it may run here at all."""
    provider_settings: dict[str, Any] = {}
    named = named_providers(
        core.get("providers", ()), core.get("routes", {}), core.get("ladder", ())
    )
    real = [name for name in named if not PROVIDERS[name].dev_only]
    if core.get("dev_mode") and real:
        # Dev mode drops the country allowlist and shows codes in the inbox: with a real
        # provider that would be a toll-fraud hole and a code leak in one variable.
        problems.append(
            f"OTPSVC_DEV_MODE: dev mode runs with the console provider only; {', '.join(real)} "
            "would place real calls"
        )
    for name in named:
        spec = PROVIDERS[name]
        if spec.dev_only and not core.get("dev_mode"):
            problems.append(f"OTPSVC_PROVIDERS: {name!r} is for dev mode only (otpsvc dev)")
        if spec.needs_public_url and not core.get("public_url"):
            problems.append(f"OTPSVC_PUBLIC_URL: required by {name!r} for its callbacks")
        if spec.settings_schema is None:
            continue
        schema = spec.settings_schema()
        try:
            provider_settings[name] = schema.load(relevant, unknown=EXCLUDE)
        except ValidationError as exc:
            problems += _problems(exc.messages)
    for step in core.get("ladder", ()):
        needs = SMS_SENDERS.get(step.provider) if step.channel == "sms" else None
        own = provider_settings.get(step.provider)
        if needs and own is not None and own.sender is None:
            problems.append(
                f"{needs}: required by the ladder's sms:{step.provider} step (a sender "
                "registered with the provider)"
            )
    return provider_settings


def _cross_problems(loaded: _Loaded, provider_settings: Mapping[str, Any]) -> list[str]:
    """The checks across settings, each on settings that loaded."""
    core, trusted = loaded.core, loaded.trusted
    problems: list[str] = []
    cequens = provider_settings.get("cequens")
    geography = ("OTPSVC_PROVIDERS", "OTPSVC_ROUTES", "OTPSVC_ALLOWED_COUNTRIES")
    if cequens is not None and trusted(*geography, "OTPSVC_DEFAULT_LOCALE"):
        problems += voice_problems("cequens", cequens.voices, core, "OTPSVC_CEQUENS_VOICES")
    if (
        trusted("OTPSVC_ALLOWED_COUNTRIES", "OTPSVC_DEV_MODE")
        and core.get("allowed_countries") is None
        and not core.get("dev_mode")
    ):
        problems.append(
            "OTPSVC_ALLOWED_COUNTRIES: required outside dev mode; list the countries calls may "
            "go to (ISO 3166 alpha-2, e.g. NG,GH,KE): voice calls elsewhere are toll-fraud bait"
        )
    if trusted("OTPSVC_REDIS_URL"):
        problems += redis_tls_problems(core)
    if trusted("OTPSVC_LADDER", "OTPSVC_RESEND_COOLDOWN", "OTPSVC_MAX_SENDS", "OTPSVC_CODE_TTL"):
        problems += ladder_problems(core)
    if (
        trusted("OTPSVC_PROVIDER_CONCURRENCY", "OTPSVC_WORKER_THREADS")
        and core["provider_concurrency"] >= core["worker_threads"] > 1
    ):
        problems.append(
            "OTPSVC_PROVIDER_CONCURRENCY: must be below OTPSVC_WORKER_THREADS "
            f"({core['worker_threads']}): starts waiting on providers would leave no thread for "
            "checks, webhooks and probes"
        )
    problems += _proxy_problems(loaded)
    if trusted("OTPSVC_API_KEYS", "OTPSVC_OPERATOR_KEYS"):
        clients = {d for c in core.get("clients", ()) for d in c.key_digests}
        if any(d in clients for o in core.get("operators", ()) for d in o.key_digests):
            problems.append("OTPSVC_OPERATOR_KEYS: an operator key must not be an API client's")
    if trusted(
        "OTPSVC_API_KEYS",
        "OTPSVC_EVENT_WEBHOOKS",
        "OTPSVC_EVENT_WEBHOOK_SECRETS",
        "OTPSVC_DEV_MODE",
    ):
        problems += event_problems(core)
    return problems


def _proxy_problems(loaded: _Loaded) -> list[str]:
    """Trusted proxies need the networks they connect from; a gateway caller needs both."""
    core, trusted = loaded.core, loaded.trusted
    problems: list[str] = []
    if (
        trusted("OTPSVC_TRUSTED_PROXIES", "OTPSVC_TRUSTED_PROXY_NETWORKS")
        and core.get("trusted_proxies")
        and not core.get("trusted_proxy_networks")
    ):
        problems.append(
            "OTPSVC_TRUSTED_PROXY_NETWORKS: required with OTPSVC_TRUSTED_PROXIES; list the "
            "networks your proxies connect from, or anyone reaching the port picks their own IP"
        )
    if (
        trusted("OTPSVC_CALLER", "OTPSVC_TRUSTED_PROXIES", "OTPSVC_TRUSTED_PROXY_NETWORKS")
        and core.get("caller") == "gateway"
        and not (core.get("trusted_proxies") and core.get("trusted_proxy_networks"))
    ):
        problems.append(
            "OTPSVC_CALLER: 'gateway' needs OTPSVC_TRUSTED_PROXIES (the gateway's hops) and "
            "OTPSVC_TRUSTED_PROXY_NETWORKS (where it connects from): without them every person "
            "behind the gateway counts as its one address, and one person's limits stop all"
        )
    return problems


def _secret_problems(relevant: Mapping[str, Any]) -> list[str]:
    """Guessable keys and placeholders copied from an example."""
    problems: list[str] = []
    for name in sorted(GUESSABLE_SECRETS):
        value = relevant.get(name)
        problem = weakness(value, MIN_API_KEY_BITS) if isinstance(value, str) and value else None
        if problem:
            problems.append(f"{name}: {problem}")
    checked_above = {
        "OTPSVC_SECRET_KEY",
        "OTPSVC_SECRET_KEY_FALLBACKS",
        "OTPSVC_API_KEYS",
        "OTPSVC_OPERATOR_KEYS",
        "OTPSVC_EVENT_WEBHOOK_SECRETS",
        *GUESSABLE_SECRETS,
    }
    for name in sorted(SECRET_SETTINGS - checked_above):
        value = relevant.get(name)
        if isinstance(value, str) and any(m in value.lower() for m in PLACEHOLDER_MARKERS):
            problems.append(f"{name}: is a placeholder from an example")
    return problems


def _test_number_problems(loaded: _Loaded) -> list[str]:
    """A test number is a standing way past verification: inside the allowlist, for a known
    client, and ending soon."""
    core = loaded.core
    if not loaded.trusted(
        "OTPSVC_ALLOWED_COUNTRIES", "OTPSVC_API_KEYS", "OTPSVC_TEST_NUMBER_MAX_DAYS"
    ):
        return []
    problems: list[str] = []
    allowed = core.get("allowed_countries")
    clients = {c.name for c in core.get("clients", ())}
    latest = date.today() + timedelta(days=core.get("test_number_max_days", 90))
    for number in core.get("test_numbers", ()):
        if allowed is not None and number.region not in allowed:
            problems.append(
                f"OTPSVC_TEST_NUMBERS: a test number in {number.region} is outside "
                "OTPSVC_ALLOWED_COUNTRIES"
            )
        if number.last_day > latest:
            problems.append(
                f"OTPSVC_TEST_NUMBERS: a test number's last day {number.last_day} is more than "
                f"OTPSVC_TEST_NUMBER_MAX_DAYS ({core.get('test_number_max_days')}) days ahead"
            )
        if number.client is not None and clients and number.client not in clients:
            problems.append(
                f"OTPSVC_TEST_NUMBERS: {number.client!r} is not a client of OTPSVC_API_KEYS"
            )
    return problems


def _shared_limit_checks(loaded: _Loaded, problems: list[str]) -> list[str]:
    """Ceilings below a client's share are problems; a call budget below one is a warning (a
    small deployment may mean it, but then one client can spend it for all). The warnings."""
    core = loaded.core
    if not core:
        return []
    variables = setting_variables()
    pairs = tuple(
        pair for pair in SHARED_LIMITS if loaded.trusted(*(variables[name] for name in pair))
    )
    problems += ceiling_problems(core, tuple(p for p in pairs if p != SHARED_LIMITS[-1]))
    warnings = ceiling_problems(core, tuple(p for p in pairs if p == SHARED_LIMITS[-1]))
    if not core.get("metrics_token") and not core.get("dev_mode"):
        warnings.append(UNGUARDED_METRICS)
    return warnings


def _known_variables() -> set[str]:
    """Every variable the core or a provider reads."""
    schemas = [SettingsSchema()] + [
        spec.settings_schema() for spec in PROVIDERS.values() if spec.settings_schema is not None
    ]
    return {f.data_key for schema in schemas for f in schema.fields.values() if f.data_key}


def _with_client_file(
    settings: Settings, env: Mapping[str, Any], file: ClientFile, problems: list[str]
) -> Settings:
    """Each client's settings: the environment with its table laid over it, loaded by
    :func:`load_settings` (so checked as the global ones are); every problem at once (those of
    the file's shape, ``problems``, too), named by its TOML path."""
    own: dict[str, Settings] = {}
    for name, table in file.tables.items():
        try:
            own[name] = load_settings(overlay(settings, env, name, table))
        except ConfigError as exc:
            problems += [rename(problem, name, table) for problem in exc.problems]
    problems += template_problems_of(file, own, settings)
    if problems:
        raise ConfigError(sorted(problems))
    return with_clients(settings, own, file)
