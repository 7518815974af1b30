"""Settings: read once from ``OTPSVC_*`` (or a mapping in tests), validated, frozen.

This is the only module that reads the environment. A bad or missing setting stops start-up with one
:class:`~otpsvc.errors.ConfigError` that lists every problem.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import itertools
import math
import os
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import limits
import phonenumbers
from marshmallow import EXCLUDE, Schema, ValidationError, fields, post_load, validate, validates
from standardwebhooks import Webhook

from otpsvc.core.phones import InvalidPhone, parse_phone
from otpsvc.errors import ConfigError
from otpsvc.store.connection import parse_redis_url
from otpsvc.voice.base import https_problem
from otpsvc.voice.registry import PROVIDERS
from otpsvc.voice.scripts import choose_locale

CLIENT_NAME = re.compile(r"\A[A-Za-z0-9_.-]{1,32}\Z")
MIN_API_KEY_LENGTH = 24
MIN_SECRET_LENGTH = 32
MAX_CODE_TTL = 600
#: Estimated entropy a secret we make ourselves must have: the server secret, an API key.
MIN_SECRET_BITS = 128
MIN_API_KEY_BITS = 96
#: Words that mark a value copied from an example rather than generated.
PLACEHOLDER_MARKERS = ("change-me", "changeme", "change_me", "replace-me", "placeholder", "your-")
GENERATE_HINT = "generate one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"


def _shannon_bits(symbols: list[int]) -> float:
    if not symbols:
        return 0.0
    counts = Counter(symbols)
    n = len(symbols)
    return -sum(c / n * math.log2(c / n) for c in counts.values()) * n


def estimated_bits(value: str) -> float:
    """A secret's entropy as its length times the Shannon entropy of its characters.

    A coarse guard, not a proof: it refuses repeated or tiny alphabets ("kkkk...", "aaaa1111")
    and short values; a random key from ``secrets.token_urlsafe(32)`` scores about 200 bits.
    """
    return _shannon_bits([ord(c) for c in value])


def sequence_bits(value: str) -> float:
    """The same measure over the steps from one character to the next: a run such as an
    alphabet ("abcdef...", "0123456789") has many characters but one step, so it scores near 0,
    while a random key scores about as high as on its characters."""
    return _shannon_bits([ord(b) - ord(a) for a, b in itertools.pairwise(value)])


def weakness(value: str, min_bits: float) -> str | None:
    """Why a secret is not good enough, or None. The one rule every secret setting is held to:
    no placeholder, enough entropy in its characters, and at least half of that in its steps
    (no alphabet or keyboard run)."""
    lowered = value.lower()
    if any(marker in lowered for marker in PLACEHOLDER_MARKERS):
        return f"is a placeholder from an example; {GENERATE_HINT}"
    if estimated_bits(value) < min_bits or sequence_bits(value) < min_bits / 2:
        return f"looks too easy to guess (under {min_bits} bits); {GENERATE_HINT}"
    return None


@dataclass(frozen=True)
class Argon2Params:
    """argon2id cost. Defaults measured on a 2-core machine: about 10 ms a verify (README)."""

    memory_kib: int = 16384
    time_cost: int = 1
    parallelism: int = 1


@dataclass(frozen=True)
class RedisTls:
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def options(self) -> dict[str, str]:
        """The redis-py connection options these files are."""
        named = {
            "ssl_ca_certs": self.ca_file,
            "ssl_certfile": self.cert_file,
            "ssl_keyfile": self.key_file,
        }
        return {option: path for option, path in named.items() if path}


@dataclass(frozen=True)
class ApiClient:
    """One API client; it may hold several keys at once, so a key can be rolled without downtime."""

    name: str
    key_digests: tuple[bytes, ...] = field(repr=False)


@dataclass(frozen=True)
class TestNumber:
    """A number that always works without a call: its fixed code passes until ``last_day`` (UTC)."""

    e164: str
    code: str = field(repr=False)
    last_day: date
    region: str | None = None
    #: The one API client that may use it (``client:+number=...``); None: every client.
    client: str | None = None

    def active_on(self, day: date) -> bool:
        return day <= self.last_day

    def serves(self, client: str) -> bool:
        return self.client is None or self.client == client


#: Settings that hold secrets: each may instead come from a file named by ``<name>_FILE``, and
#: ``otpsvc check-config`` never prints them.
SECRET_SETTINGS = frozenset(
    {
        "OTPSVC_REDIS_URL",
        "OTPSVC_SECRET_KEY",
        "OTPSVC_SECRET_KEY_FALLBACKS",
        "OTPSVC_API_KEYS",
        "OTPSVC_TEST_NUMBERS",
        "OTPSVC_METRICS_TOKEN",
        "OTPSVC_EVENT_WEBHOOK_SECRETS",
        "OTPSVC_TERMII_API_KEY",
        "OTPSVC_TERMII_WEBHOOK_SECRET",
        "OTPSVC_SEVENIO_API_KEY",
        "OTPSVC_SEVENIO_SIGNING_KEY",
        "OTPSVC_CEQUENS_API_KEY",
        "OTPSVC_ALPHASMS_API_KEY",
    }
)


#: Secrets that someone else could use to act as otpsvc or as a provider if they guessed them (the
#: others above are checked where they are parsed). Provider API keys are not judged: the
#: provider issues them in its own format.
GUESSABLE_SECRETS = frozenset(
    {"OTPSVC_METRICS_TOKEN", "OTPSVC_TERMII_WEBHOOK_SECRET", "OTPSVC_SEVENIO_SIGNING_KEY"}
)


@dataclass(frozen=True)
class Settings:
    redis_url: str = field(repr=False)
    secret_key: bytes = field(repr=False)
    clients: tuple[ApiClient, ...]
    providers: tuple[str, ...]
    provider_settings: Mapping[str, Any] = field(repr=False)
    #: Earlier secrets: what was made under them keeps working until it expires.
    secret_key_fallbacks: tuple[bytes, ...] = field(default=(), repr=False)
    #: Per country calling code, the ordered providers; others use ``providers``.
    routes: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    dev_mode: bool = False
    #: For a ``rediss://`` URL: the CA bundle that signed the server's certificate, and the
    #: client certificate and key when the server asks for one.
    redis_tls: RedisTls = RedisTls()
    redis_prefix: str = "otpsvc"
    redis_socket_timeout: float = 1.0
    redis_connect_timeout: float = 1.0
    #: With Sentinel or Cluster: how long a check waits for a replica to acknowledge its attempt.
    redis_wait_ms: int = 100
    code_length: int = 6
    code_ttl: int = 300
    max_check_attempts: int = 5
    max_sends: int = 5
    resend_cooldown: int = 30
    argon2: Argon2Params = Argon2Params()
    #: Requests per end-user IP (``end_user.ip``, else the connecting address).
    rate_limit_start_ip: str = "10 per minute;60 per hour"
    rate_limit_check_ip: str = "30 per minute;300 per hour"
    #: Requests per API client after authentication: sized for a backend serving many people.
    rate_limit_client: str = "6000 per minute"
    #: Requests that fail authentication, per connecting address.
    rate_limit_auth_failures: str = "10 per minute;50 per hour"
    #: IPv6 addresses are limited per network of this many bits (one host holds a whole /64).
    ipv6_prefix: int = 64
    idempotency_ttl: int = 86400
    #: Idempotency-Key records one client may hold at once (only answers that changed
    #: something are kept: at most one a call, so twice the client's daily calls by default).
    idempotency_max_keys: int = 20000
    #: How far ahead a test number's last day may be.
    test_number_max_days: int = 90
    test_numbers: tuple[TestNumber, ...] = field(default=(), repr=False)
    #: Calls placed (not requests) per number, client, end-user IP, end-user id, number prefix
    #: and country.
    velocity_phone: str = "5 per hour;10 per day"
    velocity_user: str = "5 per hour;10 per day"
    velocity_client: str = "1000 per hour;10000 per day"
    velocity_ip: str = "10 per hour;30 per day"
    velocity_prefix: str = "20 per hour;100 per day"
    velocity_prefix_digits: int = 6
    velocity_country: str = "500 per hour;5000 per day"
    #: Global ceilings per target, all clients together: the toll-fraud backstop above the
    #: per-client shares (``velocity_phone`` ...). Default: three times the share.
    velocity_phone_all: str = "15 per hour;30 per day"
    velocity_prefix_all: str = "60 per hour;300 per day"
    velocity_country_all: str = "1500 per hour;15000 per day"
    #: Distinct clients whose calls the person must deny ("9") before the number is blocked
    #: for every client; one denial blocks the number for the client that placed the call.
    deny_clients: int = 2
    call_budget: str = "2000 per hour;20000 per day"
    calls_enabled: bool = True
    #: ISO 3166 alpha-2 codes calls may go to; None (dev mode only) means anywhere.
    allowed_countries: frozenset[str] | None = None
    allowed_number_types: frozenset[int] = frozenset(
        {
            phonenumbers.PhoneNumberType.MOBILE,
            phonenumbers.PhoneNumberType.FIXED_LINE,
            phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE,
        }
    )
    #: Wrong codes per number and API client per day; past it that client's starts are refused.
    max_failed_checks_per_number: int = 10
    #: Wrong codes per number per day, all clients together; past it calls to the number slow
    #: down to one per ``failed_checks_slowdown`` seconds instead of stopping.
    max_failed_checks_all_clients: int = 30
    failed_checks_slowdown: int = 600
    #: OTPSVC_* variables that no setting reads (a typo, or a setting that was renamed).
    unknown: tuple[str, ...] = ()
    #: Settings that work but are probably not what the operator meant (logged at start-up,
    #: printed by ``otpsvc check-config``).
    warnings: tuple[str, ...] = ()
    trusted_proxies: int = 0
    #: Where those proxies connect from; X-Forwarded-For from anywhere else is ignored.
    trusted_proxy_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    provider_connect_timeout: float = 3.05
    provider_read_timeout: float = 10.0
    #: Threads of each gunicorn worker (the gthread worker): requests one worker serves at once.
    worker_threads: int = 12
    #: Of those, how many may wait on a voice provider at once; a start past it is refused at
    #: once (503 providers_busy) so that checks, webhooks and probes always find a thread.
    provider_concurrency: int = 8
    brand: str = "otpsvc"
    default_locale: str = "en"
    call_repeats: int = 2
    public_url: str | None = None
    breaker_threshold: int = 5
    breaker_window: int = 60
    breaker_cooloff: int = 30
    deny_block: int = 3600
    log_level: str = "INFO"
    #: Per API client, the URL its events go to, and the secret they are signed with.
    event_webhooks: Mapping[str, str] = field(default_factory=dict)
    #: Per API client, its signing secrets: every delivery is signed with each (several while a
    #: secret is rotated; list a client once per secret).
    event_webhook_secrets: Mapping[str, tuple[str, ...]] = field(default_factory=dict, repr=False)
    event_retry_base: float = 5.0
    event_retry_window: int = 86400
    #: When set, GET /metrics needs "Authorization: Bearer <token>".
    metrics_token: str | None = field(default=None, repr=False)

    @property
    def all_providers(self) -> tuple[str, ...]:
        """Every provider named by the default order or a route, once, in first-seen order."""
        return _named_providers(self.providers, self.routes)


def _limit_string(value: str) -> None:
    try:
        limits.parse_many(value)
    except ValueError as exc:
        raise ValidationError("not a rate limit such as '10 per minute;100 per day'") from exc


class _SettingsSchema(Schema):
    """The environment as strings, keyed by the variable names, so errors name the variable."""

    dev_mode = fields.Boolean(data_key="OTPSVC_DEV_MODE", load_default=False)
    redis_url = fields.String(data_key="OTPSVC_REDIS_URL", required=True)
    redis_tls_ca_file = fields.String(data_key="OTPSVC_REDIS_TLS_CA_FILE", load_default=None)
    redis_tls_cert_file = fields.String(data_key="OTPSVC_REDIS_TLS_CERT_FILE", load_default=None)
    redis_tls_key_file = fields.String(data_key="OTPSVC_REDIS_TLS_KEY_FILE", load_default=None)
    redis_prefix = fields.String(
        data_key="OTPSVC_REDIS_PREFIX",
        load_default="otpsvc",
        validate=validate.Regexp(r"\A[A-Za-z0-9_.:-]{1,32}\Z"),
    )
    redis_socket_timeout = fields.Float(
        data_key="OTPSVC_REDIS_TIMEOUT", load_default=1.0, validate=validate.Range(0.01, 30)
    )
    redis_connect_timeout = fields.Float(
        data_key="OTPSVC_REDIS_CONNECT_TIMEOUT", load_default=1.0, validate=validate.Range(0.01, 30)
    )
    redis_wait_ms = fields.Integer(
        data_key="OTPSVC_REDIS_WAIT_MS", load_default=100, validate=validate.Range(0, 5000)
    )
    secret_key = fields.String(
        data_key="OTPSVC_SECRET_KEY",
        required=True,
        validate=validate.Length(
            min=MIN_SECRET_LENGTH, error=f"must be at least {MIN_SECRET_LENGTH} characters"
        ),
    )
    secret_key_fallbacks = fields.String(data_key="OTPSVC_SECRET_KEY_FALLBACKS", load_default="")
    api_keys = fields.String(data_key="OTPSVC_API_KEYS", required=True)
    test_numbers = fields.String(data_key="OTPSVC_TEST_NUMBERS", load_default="")
    providers = fields.String(data_key="OTPSVC_PROVIDERS", required=True)
    routes = fields.String(data_key="OTPSVC_ROUTES", load_default="")
    call_repeats = fields.Integer(
        data_key="OTPSVC_CALL_REPEATS", load_default=2, validate=validate.Range(1, 4)
    )
    public_url = fields.Url(
        data_key="OTPSVC_PUBLIC_URL",
        load_default=None,
        schemes={"http", "https"},
        require_tld=False,
    )
    breaker_threshold = fields.Integer(
        data_key="OTPSVC_BREAKER_THRESHOLD", load_default=5, validate=validate.Range(1, 100)
    )
    breaker_window = fields.Integer(
        data_key="OTPSVC_BREAKER_WINDOW", load_default=60, validate=validate.Range(1, 3600)
    )
    breaker_cooloff = fields.Integer(
        data_key="OTPSVC_BREAKER_COOLOFF", load_default=30, validate=validate.Range(1, 3600)
    )
    deny_block = fields.Integer(
        data_key="OTPSVC_DENY_BLOCK", load_default=3600, validate=validate.Range(60, 86400)
    )
    code_length = fields.Integer(
        data_key="OTPSVC_CODE_LENGTH", load_default=6, validate=validate.Range(4, 8)
    )
    code_ttl = fields.Integer(
        data_key="OTPSVC_CODE_TTL", load_default=300, validate=validate.Range(30, MAX_CODE_TTL)
    )
    max_check_attempts = fields.Integer(
        data_key="OTPSVC_MAX_CHECK_ATTEMPTS", load_default=5, validate=validate.Range(1, 10)
    )
    max_sends = fields.Integer(
        data_key="OTPSVC_MAX_SENDS", load_default=5, validate=validate.Range(1, 10)
    )
    resend_cooldown = fields.Integer(
        data_key="OTPSVC_RESEND_COOLDOWN", load_default=30, validate=validate.Range(0, 600)
    )
    argon2_memory_kib = fields.Integer(
        data_key="OTPSVC_ARGON2_MEMORY_KIB",
        load_default=16384,
        validate=validate.Range(64, 1 << 20),
    )
    argon2_time_cost = fields.Integer(
        data_key="OTPSVC_ARGON2_TIME_COST", load_default=1, validate=validate.Range(1, 10)
    )
    argon2_parallelism = fields.Integer(
        data_key="OTPSVC_ARGON2_PARALLELISM", load_default=1, validate=validate.Range(1, 8)
    )
    rate_limit_start_ip = fields.String(
        data_key="OTPSVC_RATE_LIMIT_START_IP",
        load_default=Settings.rate_limit_start_ip,
        validate=_limit_string,
    )
    rate_limit_check_ip = fields.String(
        data_key="OTPSVC_RATE_LIMIT_CHECK_IP",
        load_default=Settings.rate_limit_check_ip,
        validate=_limit_string,
    )
    rate_limit_client = fields.String(
        data_key="OTPSVC_RATE_LIMIT_CLIENT",
        load_default=Settings.rate_limit_client,
        validate=_limit_string,
    )
    rate_limit_auth_failures = fields.String(
        data_key="OTPSVC_RATE_LIMIT_AUTH_FAILURES",
        load_default=Settings.rate_limit_auth_failures,
        validate=_limit_string,
    )
    ipv6_prefix = fields.Integer(
        data_key="OTPSVC_IPV6_PREFIX", load_default=64, validate=validate.Range(48, 128)
    )
    idempotency_ttl = fields.Integer(
        data_key="OTPSVC_IDEMPOTENCY_TTL", load_default=86400, validate=validate.Range(60, 604800)
    )
    test_number_max_days = fields.Integer(
        data_key="OTPSVC_TEST_NUMBER_MAX_DAYS", load_default=90, validate=validate.Range(1, 366)
    )
    idempotency_max_keys = fields.Integer(
        data_key="OTPSVC_IDEMPOTENCY_MAX_KEYS",
        load_default=20000,
        validate=validate.Range(10, 10_000_000),
    )
    velocity_phone = fields.String(
        data_key="OTPSVC_VELOCITY_PHONE",
        load_default=Settings.velocity_phone,
        validate=_limit_string,
    )
    velocity_user = fields.String(
        data_key="OTPSVC_VELOCITY_USER",
        load_default=Settings.velocity_user,
        validate=_limit_string,
    )
    velocity_client = fields.String(
        data_key="OTPSVC_VELOCITY_CLIENT",
        load_default=Settings.velocity_client,
        validate=_limit_string,
    )
    velocity_ip = fields.String(
        data_key="OTPSVC_VELOCITY_IP", load_default=Settings.velocity_ip, validate=_limit_string
    )
    velocity_prefix = fields.String(
        data_key="OTPSVC_VELOCITY_PREFIX",
        load_default=Settings.velocity_prefix,
        validate=_limit_string,
    )
    velocity_prefix_digits = fields.Integer(
        data_key="OTPSVC_VELOCITY_PREFIX_DIGITS", load_default=6, validate=validate.Range(1, 10)
    )
    velocity_country = fields.String(
        data_key="OTPSVC_VELOCITY_COUNTRY",
        load_default=Settings.velocity_country,
        validate=_limit_string,
    )
    velocity_phone_all = fields.String(
        data_key="OTPSVC_VELOCITY_PHONE_ALL", load_default=None, validate=_limit_string
    )
    velocity_prefix_all = fields.String(
        data_key="OTPSVC_VELOCITY_PREFIX_ALL", load_default=None, validate=_limit_string
    )
    velocity_country_all = fields.String(
        data_key="OTPSVC_VELOCITY_COUNTRY_ALL", load_default=None, validate=_limit_string
    )
    deny_clients = fields.Integer(
        data_key="OTPSVC_DENY_CLIENTS", load_default=2, validate=validate.Range(1, 10)
    )
    call_budget = fields.String(
        data_key="OTPSVC_CALL_BUDGET", load_default=Settings.call_budget, validate=_limit_string
    )
    calls_enabled = fields.Boolean(data_key="OTPSVC_CALLS_ENABLED", load_default=True)
    allowed_countries = fields.String(data_key="OTPSVC_ALLOWED_COUNTRIES", load_default=None)
    allowed_number_types = fields.String(
        data_key="OTPSVC_ALLOWED_NUMBER_TYPES",
        load_default="mobile,fixed_line,fixed_line_or_mobile",
    )
    max_failed_checks_per_number = fields.Integer(
        data_key="OTPSVC_MAX_FAILED_CHECKS_PER_NUMBER",
        load_default=10,
        validate=validate.Range(1, 100),
    )
    max_failed_checks_all_clients = fields.Integer(
        data_key="OTPSVC_MAX_FAILED_CHECKS_ALL_CLIENTS",
        load_default=30,
        validate=validate.Range(1, 1000),
    )
    failed_checks_slowdown = fields.Integer(
        data_key="OTPSVC_FAILED_CHECKS_SLOWDOWN",
        load_default=600,
        validate=validate.Range(1, 86400),
    )
    trusted_proxies = fields.Integer(
        data_key="OTPSVC_TRUSTED_PROXIES", load_default=0, validate=validate.Range(0, 5)
    )
    trusted_proxy_networks = fields.String(
        data_key="OTPSVC_TRUSTED_PROXY_NETWORKS", load_default=""
    )
    provider_connect_timeout = fields.Float(
        data_key="OTPSVC_PROVIDER_CONNECT_TIMEOUT",
        load_default=3.05,
        validate=validate.Range(0.05, 30),
    )
    provider_read_timeout = fields.Float(
        data_key="OTPSVC_PROVIDER_READ_TIMEOUT", load_default=10.0, validate=validate.Range(0.1, 60)
    )
    worker_threads = fields.Integer(
        data_key="OTPSVC_WORKER_THREADS", load_default=12, validate=validate.Range(1, 256)
    )
    provider_concurrency = fields.Integer(
        data_key="OTPSVC_PROVIDER_CONCURRENCY", load_default=8, validate=validate.Range(1, 255)
    )
    brand = fields.String(
        data_key="OTPSVC_BRAND",
        load_default="otpsvc",
        validate=validate.Regexp(r"\A[\w .&'-]{1,40}\Z", error="1-40 letters, digits, spaces"),
    )
    default_locale = fields.String(
        data_key="OTPSVC_DEFAULT_LOCALE",
        load_default="en",
        validate=validate.Regexp(r"\A[a-z]{2}\Z", error="a two-letter language code"),
    )
    event_webhooks = fields.String(data_key="OTPSVC_EVENT_WEBHOOKS", load_default="")
    event_webhook_secrets = fields.String(data_key="OTPSVC_EVENT_WEBHOOK_SECRETS", load_default="")
    event_retry_base = fields.Float(
        data_key="OTPSVC_EVENT_RETRY_BASE", load_default=5.0, validate=validate.Range(0.05, 600)
    )
    event_retry_window = fields.Integer(
        data_key="OTPSVC_EVENT_RETRY_WINDOW",
        load_default=86400,
        validate=validate.Range(60, 604800),
    )
    metrics_token = fields.String(
        data_key="OTPSVC_METRICS_TOKEN", load_default=None, validate=validate.Length(min=16)
    )
    log_level = fields.String(
        data_key="OTPSVC_LOG_LEVEL",
        load_default="INFO",
        validate=validate.OneOf(["DEBUG", "INFO", "WARNING", "ERROR"]),
    )

    @validates("api_keys")
    def _check_api_keys(self, value: str, **_: object) -> None:
        _parse_api_keys(value)

    @validates("redis_url")
    def _check_redis_url(self, value: str, **_: object) -> None:
        try:
            parse_redis_url(value)
        except ValueError as exc:
            raise ValidationError(str(exc)) from exc

    @validates("secret_key")
    def _check_secret_strength(self, value: str, **_: object) -> None:
        problem = weakness(value, MIN_SECRET_BITS)
        if problem and len(value) >= MIN_SECRET_LENGTH:
            raise ValidationError(problem)

    @validates("secret_key_fallbacks")
    def _check_fallbacks(self, value: str, **_: object) -> None:
        _parse_fallbacks(value)

    @validates("trusted_proxy_networks")
    def _check_networks(self, value: str, **_: object) -> None:
        _parse_networks(value)

    @validates("test_numbers")
    def _check_test_numbers(self, value: str, **_: object) -> None:
        _parse_test_numbers(value)

    @validates("providers")
    def _check_providers(self, value: str, **_: object) -> None:
        names = _split(value)
        if not names:
            raise ValidationError("name at least one provider")
        _known_providers(names)

    @validates("allowed_countries")
    def _check_countries(self, value: str | None, **_: object) -> None:
        _parse_countries(value)

    @validates("allowed_number_types")
    def _check_number_types(self, value: str, **_: object) -> None:
        _parse_number_types(value)

    @validates("routes")
    def _check_routes(self, value: str, **_: object) -> None:
        _parse_routes(value)

    @post_load
    def _build(self, data: dict[str, Any], **_: object) -> dict[str, Any]:
        for share, ceiling in SHARED_LIMITS[:-1]:
            if data[ceiling] is None:
                data[ceiling] = scaled_limit(data[share], CEILING_FACTOR)
        data["redis_tls"] = RedisTls(
            ca_file=data.pop("redis_tls_ca_file"),
            cert_file=data.pop("redis_tls_cert_file"),
            key_file=data.pop("redis_tls_key_file"),
        )
        data["argon2"] = Argon2Params(
            memory_kib=data.pop("argon2_memory_kib"),
            time_cost=data.pop("argon2_time_cost"),
            parallelism=data.pop("argon2_parallelism"),
        )
        if "api_keys" in data:  # absent only from a partial load (see _load_the_rest)
            data["clients"] = _parse_api_keys(data.pop("api_keys"))
        data["secret_key_fallbacks"] = _parse_fallbacks(data["secret_key_fallbacks"])
        data["test_numbers"] = _parse_test_numbers(data["test_numbers"])
        data["trusted_proxy_networks"] = _parse_networks(data["trusted_proxy_networks"])
        data["event_webhooks"] = _parse_pairs(data["event_webhooks"], "OTPSVC_EVENT_WEBHOOKS")
        data["event_webhook_secrets"] = _parse_multi_pairs(
            data["event_webhook_secrets"], "OTPSVC_EVENT_WEBHOOK_SECRETS"
        )
        if "providers" in data:
            data["providers"] = tuple(_split(data["providers"]))
        data["routes"] = _parse_routes(data["routes"])
        data["allowed_countries"] = _parse_countries(data["allowed_countries"])
        data["allowed_number_types"] = _parse_number_types(data["allowed_number_types"])
        if data["public_url"]:
            data["public_url"] = data["public_url"].rstrip("/")
        if "secret_key" in data:
            data["secret_key"] = data["secret_key"].encode()
        return data


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
    variables = setting_variables()
    problems = []
    for share, ceiling in pairs:
        if share not in core or ceiling not in core:
            continue
        for item in limits.parse_many(core[ceiling]):
            most = one_client_most(core[share], item.get_expiry())
            if item.amount <= most:
                problems.append(
                    f"{variables[ceiling]}: {item} is not above what one client's share "
                    f"({variables[share]}) may place in that time ({most}): one client could "
                    "spend it for every client"
                )
    return problems


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


NUMBER_TYPES: dict[str, int] = {
    name.lower(): value
    for name, value in vars(phonenumbers.PhoneNumberType).items()
    if name.isupper() and isinstance(value, int)
}


def _parse_countries(value: str | None) -> frozenset[str] | None:
    if value is None:
        return None
    codes = {code.upper() for code in _split(value)}
    unknown = sorted(codes - phonenumbers.SUPPORTED_REGIONS)
    if not codes or unknown:
        raise ValidationError(
            f"must list ISO 3166 alpha-2 codes such as NG,DE; unknown: {', '.join(unknown)}"
        )
    return frozenset(codes)


def _parse_number_types(value: str) -> frozenset[int]:
    names = [name.lower() for name in _split(value)]
    unknown = [n for n in names if n not in NUMBER_TYPES]
    if not names or unknown:
        raise ValidationError(
            f"unknown number type(s) {', '.join(unknown)}; known: {', '.join(sorted(NUMBER_TYPES))}"
        )
    return frozenset(NUMBER_TYPES[n] for n in names)


def _named_providers(
    default: tuple[str, ...], routes: Mapping[int, tuple[str, ...]]
) -> tuple[str, ...]:
    names = [*default, *(name for route in routes.values() for name in route)]
    return tuple(dict.fromkeys(names))


def _known_providers(names: list[str]) -> None:
    unknown = [n for n in names if n not in PROVIDERS]
    if unknown:
        raise ValidationError(
            f"unknown provider(s) {', '.join(unknown)}; known: {', '.join(sorted(PROVIDERS))}"
        )


def _parse_routes(value: str) -> dict[int, tuple[str, ...]]:
    """``234=termii,sevenio;20,966=cequens`` -> {234: ("termii", "sevenio"), 20: ...}"""
    routes: dict[int, tuple[str, ...]] = {}
    for entry in (part.strip() for part in value.split(";") if part.strip()):
        codes, sep, names = entry.partition("=")
        providers = _split(names)
        if not sep or not providers:
            raise ValidationError(f"{entry!r} must be codes=provider,provider")
        _known_providers(providers)
        for code in _split(codes):
            if not code.isdigit() or not 1 <= int(code) <= 999:
                raise ValidationError(f"{code!r} is not a country calling code")
            if int(code) in routes:
                raise ValidationError(f"country calling code {code} has two routes")
            routes[int(code)] = tuple(providers)
    return routes


def _parse_api_keys(value: str) -> tuple[ApiClient, ...]:
    """``name:key,name:key`` -> clients holding only a digest of each key.

    A name may appear more than once: a client then holds several keys at once, so a key can be
    rolled (add the new one, move the callers, remove the old one) without downtime.
    """
    digests: dict[str, list[bytes]] = {}
    for index, entry in enumerate(_split(value), start=1):
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


def _parse_pairs(value: str, variable: str) -> dict[str, str]:
    """``client=value;client=value`` -> {client: value}."""
    pairs: dict[str, str] = {}
    for entry in (part.strip() for part in value.split(";") if part.strip()):
        name, sep, item = entry.partition("=")
        if not sep or not CLIENT_NAME.match(name.strip()) or not item.strip():
            raise ValidationError(f"{variable}: each entry must be client=value")
        pairs[name.strip()] = item.strip()
    return pairs


def _parse_multi_pairs(value: str, variable: str) -> dict[str, tuple[str, ...]]:
    """``client=a;client=b;other=c`` -> {client: (a, b), other: (c,)}: a client named again
    holds several values at once (a secret being rotated)."""
    values: dict[str, list[str]] = {}
    for entry in (part.strip() for part in value.split(";") if part.strip()):
        name, sep, item = entry.partition("=")
        if not sep or not CLIENT_NAME.match(name.strip()) or not item.strip():
            raise ValidationError(f"{variable}: each entry must be client=value")
        values.setdefault(name.strip(), []).append(item.strip())
    return {name: tuple(items) for name, items in values.items()}


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


def _voice_problems(
    provider: str, voices: Mapping[str, str], core: Mapping[str, Any], variable: str
) -> list[str]:
    """A route that sends a language to ``provider`` for which it has no voice."""
    return [
        f"{variable}: the routes send {provider} calls in {locale!r} (to "
        f"{', '.join(regions)}) and it has no voice for {locale!r}; add {locale}=<voice>"
        for locale, regions in _route_languages(provider, core).items()
        if locale not in voices
    ]


def _event_problems(core: Mapping[str, Any]) -> list[str]:
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
            problem = _webhook_secret_weakness(secret)
            if problem:
                problems.append(f"OTPSVC_EVENT_WEBHOOK_SECRETS: {client}: {problem}")
    return problems


#: Standard Webhooks recommends signing secrets of 24 to 64 random bytes.
MIN_WEBHOOK_SECRET_BYTES = 24


def _webhook_secret_weakness(secret: str) -> str | None:
    """A ``whsec_`` secret shorter than 24 bytes, or whose bytes are not random enough."""
    encoded = secret.removeprefix("whsec_")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return "not a whsec_<base64> signing secret"
    if len(raw) < MIN_WEBHOOK_SECRET_BYTES:
        return (
            f"{len(raw)} bytes; make one of at least {MIN_WEBHOOK_SECRET_BYTES} random bytes: "
            'python3 -c \'import base64,secrets; print("whsec_" + '
            "base64.b64encode(secrets.token_bytes(32)).decode())'"
        )
    return weakness(encoded, MIN_SECRET_BITS)


def _redis_tls_problems(core: Mapping[str, Any]) -> list[str]:
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


def _parse_networks(
    value: str,
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    try:
        return tuple(ipaddress.ip_network(part, strict=False) for part in _split(value))
    except ValueError as exc:
        raise ValidationError("must list networks such as 10.0.0.0/8,fd00::/8") from exc


def _parse_fallbacks(value: str) -> tuple[bytes, ...]:
    secrets = _split(value)
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


TEST_NUMBER_CODE = re.compile(r"[0-9]{4,8}", re.ASCII)


def _parse_test_numbers(value: str) -> tuple[TestNumber, ...]:
    """``[client:]+2348000000001=482913@2027-06-30,...`` -> test numbers (number = code @ last
    day, UTC; with ``client:`` only that API client may use it)."""
    numbers: list[TestNumber] = []
    for index, entry in enumerate(_split(value), start=1):
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


def _read_secret_files(env: Mapping[str, Any], problems: list[str]) -> dict[str, Any]:
    """``<NAME>_FILE`` names a file holding the value of the secret setting ``<NAME>`` (as Docker
    and Kubernetes mount secrets). Setting both is an error: which one wins would be a guess."""
    out = dict(env)
    for name in sorted(SECRET_SETTINGS):
        path = env.get(f"{name}_FILE")
        if path is None:
            continue
        del out[f"{name}_FILE"]
        if name in env:
            problems.append(f"{name}: set either {name} or {name}_FILE, not both")
            continue
        try:
            out[name] = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{name}_FILE: cannot read {path}: {type(exc).__name__}")
    return out


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
        schema = _SettingsSchema()
        required = tuple(name for name, item in schema.fields.items() if item.required)
        # Only the required settings may be missing; the others take their defaults.
        loaded: dict[str, Any] = schema.load(rest, unknown=EXCLUDE, partial=required)
    except (ValidationError, KeyError, ValueError):
        return {}
    return loaded


def setting_variables() -> dict[str, str]:
    """Each setting's variable name, by the setting's attribute name."""
    return {name: str(f.data_key) for name, f in _SettingsSchema().fields.items()}


def environment() -> dict[str, str]:
    """The ``OTPSVC_*`` variables of the process environment."""
    return {k: v for k, v in os.environ.items() if k.startswith("OTPSVC_")}


def load_settings(source: Mapping[str, Any] | None = None) -> Settings:
    """Build the settings from ``source`` (default: the process environment)."""
    env = environment() if source is None else source
    problems: list[str] = []
    relevant = _read_secret_files(
        {k: v for k, v in env.items() if k.startswith("OTPSVC_")}, problems
    )
    failed: set[str] = set()
    try:
        core: dict[str, Any] = _SettingsSchema().load(relevant, unknown=EXCLUDE)
    except ValidationError as exc:
        problems += _problems(exc.messages)
        failed = set(exc.messages)
        core = _load_the_rest(relevant, failed)

    def trusted(*variables: str) -> bool:
        """A check across settings runs only on settings that loaded: one that failed would
        stand in with its default and report a problem that is not there."""
        return bool(core) and not failed.intersection(variables)

    provider_settings: dict[str, Any] = {}
    named = _named_providers(core.get("providers", ()), core.get("routes", {}))
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

    cequens = provider_settings.get("cequens")
    geography = ("OTPSVC_PROVIDERS", "OTPSVC_ROUTES", "OTPSVC_ALLOWED_COUNTRIES")
    if cequens is not None and trusted(*geography, "OTPSVC_DEFAULT_LOCALE"):
        problems += _voice_problems("cequens", cequens.voices, core, "OTPSVC_CEQUENS_VOICES")
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
        problems += _redis_tls_problems(core)
    if (
        trusted("OTPSVC_PROVIDER_CONCURRENCY", "OTPSVC_WORKER_THREADS")
        and core["provider_concurrency"] >= core["worker_threads"] > 1
    ):
        problems.append(
            "OTPSVC_PROVIDER_CONCURRENCY: must be below OTPSVC_WORKER_THREADS "
            f"({core['worker_threads']}): starts waiting on providers would leave no thread for "
            "checks, webhooks and probes"
        )
    if (
        trusted("OTPSVC_TRUSTED_PROXIES", "OTPSVC_TRUSTED_PROXY_NETWORKS")
        and core.get("trusted_proxies")
        and not core.get("trusted_proxy_networks")
    ):
        problems.append(
            "OTPSVC_TRUSTED_PROXY_NETWORKS: required with OTPSVC_TRUSTED_PROXIES; list the "
            "networks your proxies connect from, or anyone reaching the port picks their own IP"
        )
    if trusted(
        "OTPSVC_API_KEYS",
        "OTPSVC_EVENT_WEBHOOKS",
        "OTPSVC_EVENT_WEBHOOK_SECRETS",
        "OTPSVC_DEV_MODE",
    ):
        problems += _event_problems(core)
    for name in sorted(GUESSABLE_SECRETS):
        value = relevant.get(name)
        problem = weakness(value, MIN_API_KEY_BITS) if isinstance(value, str) and value else None
        if problem:
            problems.append(f"{name}: {problem}")
    checked_above = {
        "OTPSVC_SECRET_KEY",
        "OTPSVC_SECRET_KEY_FALLBACKS",
        "OTPSVC_API_KEYS",
        "OTPSVC_EVENT_WEBHOOK_SECRETS",
        *GUESSABLE_SECRETS,
    }
    for name in sorted(SECRET_SETTINGS - checked_above):
        value = relevant.get(name)
        if isinstance(value, str) and any(m in value.lower() for m in PLACEHOLDER_MARKERS):
            problems.append(f"{name}: is a placeholder from an example")
    allowed = core.get("allowed_countries")
    clients = {c.name for c in core.get("clients", ())}
    latest = date.today() + timedelta(days=core.get("test_number_max_days", 90))
    numbers_checked = trusted(
        "OTPSVC_ALLOWED_COUNTRIES", "OTPSVC_API_KEYS", "OTPSVC_TEST_NUMBER_MAX_DAYS"
    )
    for number in core.get("test_numbers", ()) if numbers_checked else ():
        if allowed is not None and number.region not in allowed:
            problems.append(
                f"OTPSVC_TEST_NUMBERS: a test number in {number.region} is outside "
                "OTPSVC_ALLOWED_COUNTRIES"
            )
        if number.last_day > latest:
            # A test number is a standing way past verification: it must end, and soon.
            problems.append(
                f"OTPSVC_TEST_NUMBERS: a test number's last day {number.last_day} is more than "
                f"OTPSVC_TEST_NUMBER_MAX_DAYS ({core.get('test_number_max_days')}) days ahead"
            )
        if number.client is not None and clients and number.client not in clients:
            problems.append(
                f"OTPSVC_TEST_NUMBERS: {number.client!r} is not a client of OTPSVC_API_KEYS"
            )
    warnings: list[str] = []
    if core:
        variables = setting_variables()
        pairs = tuple(
            pair for pair in SHARED_LIMITS if trusted(*(variables[name] for name in pair))
        )
        problems += ceiling_problems(core, tuple(p for p in pairs if p != SHARED_LIMITS[-1]))
        # A call budget below one client's share is legitimate on a small deployment, but then
        # one client can spend it for all: said, not refused.
        warnings += ceiling_problems(core, tuple(p for p in pairs if p == SHARED_LIMITS[-1]))
        if not core.get("metrics_token") and not core.get("dev_mode"):
            warnings.append(
                "OTPSVC_METRICS_TOKEN is not set: /metrics is open on the port that also takes "
                "provider webhooks from the internet; set a token, or keep /metrics off the "
                "ingress"
            )
    if problems:
        raise ConfigError(sorted(problems))
    known = {f.data_key for f in _SettingsSchema().fields.values()} | {
        f.data_key
        for spec in PROVIDERS.values()
        if spec.settings_schema is not None
        for f in spec.settings_schema().fields.values()
    }
    unknown = tuple(sorted(set(relevant) - known - {"OTPSVC_TEST_REDIS_URL"}))
    return Settings(
        provider_settings=provider_settings, unknown=unknown, warnings=tuple(warnings), **core
    )
