"""The environment as strings, one field per ``OTPSVC_*`` variable, so errors name it."""

from __future__ import annotations

from typing import Any

import limits
from marshmallow import Schema, ValidationError, fields, post_load, validate, validates

from otpsvc.config.checks import CEILING_FACTOR, SHARED_LIMITS, scaled_limit
from otpsvc.config.model import BRAND, MAX_CODE_TTL, Argon2Params, RedisTls, Settings
from otpsvc.config.secrets import MIN_SECRET_BITS, MIN_SECRET_LENGTH, weakness
from otpsvc.config.values import (
    known_providers,
    parse_api_keys,
    parse_countries,
    parse_fallbacks,
    parse_ladder,
    parse_modes,
    parse_multi_pairs,
    parse_networks,
    parse_number_types,
    parse_pairs,
    parse_routes,
    parse_suspensions,
    parse_test_numbers,
    split,
)
from otpsvc.money import CURRENCY, BadAmount, parse_budget
from otpsvc.store.connection import parse_redis_url


def _limit_string(value: str) -> None:
    try:
        limits.parse_many(value)
    except ValueError as exc:
        raise ValidationError("not a rate limit such as '10 per minute;100 per day'") from exc


def _money_budget(value: str) -> None:
    try:
        parse_budget(value)
    except BadAmount as exc:
        raise ValidationError(str(exc)) from exc


class SettingsSchema(Schema):
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
    modes = fields.String(data_key="OTPSVC_MODES", load_default="code,keypress,match")
    ladder = fields.String(data_key="OTPSVC_LADDER", load_default="")
    request_brand = fields.Boolean(data_key="OTPSVC_REQUEST_BRAND", load_default=False)
    clients_file = fields.String(data_key="OTPSVC_CLIENTS_FILE", load_default=None)
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
    argon2_concurrency = fields.Integer(
        data_key="OTPSVC_ARGON2_CONCURRENCY", load_default=2, validate=validate.Range(1, 64)
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
    end_user_addresses_max = fields.Integer(
        data_key="OTPSVC_END_USER_ADDRESSES_MAX",
        load_default=100_000,
        validate=validate.Range(100, 100_000_000),
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
    allowed_countries_voice = fields.String(
        data_key="OTPSVC_ALLOWED_COUNTRIES_VOICE", load_default=None
    )
    allowed_countries_sms = fields.String(
        data_key="OTPSVC_ALLOWED_COUNTRIES_SMS", load_default=None
    )
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
    caller = fields.String(
        data_key="OTPSVC_CALLER",
        load_default="backend",
        validate=validate.OneOf(["backend", "gateway"], error="must be 'backend' or 'gateway'"),
    )
    end_user_id_header = fields.String(
        data_key="OTPSVC_END_USER_ID_HEADER",
        load_default="X-End-User-Id",
        validate=validate.Regexp(
            r"\A[A-Za-z0-9-]{1,64}\Z", error="a header name: letters, digits and '-'"
        ),
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
    provider_slot_wait = fields.Float(
        data_key="OTPSVC_PROVIDER_SLOT_WAIT", load_default=2.0, validate=validate.Range(0, 10)
    )
    brand = fields.String(
        data_key="OTPSVC_BRAND",
        load_default="otpsvc",
        validate=validate.Regexp(BRAND, error="1-40 letters, digits (0-9), spaces and . & ' -"),
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
    event_failed_days = fields.Integer(
        data_key="OTPSVC_EVENT_FAILED_DAYS", load_default=14, validate=validate.Range(1, 365)
    )
    metrics_token = fields.String(
        data_key="OTPSVC_METRICS_TOKEN", load_default=None, validate=validate.Length(min=16)
    )
    operator_keys = fields.String(data_key="OTPSVC_OPERATOR_KEYS", load_default=None)
    insights_days = fields.Integer(
        data_key="OTPSVC_INSIGHTS_DAYS", load_default=35, validate=validate.Range(0, 400)
    )
    fraud_mode = fields.String(
        data_key="OTPSVC_FRAUD_MODE",
        load_default="monitor",
        validate=validate.OneOf(("monitor", "enforce", "off")),
    )
    fraud_prefix_digits = fields.Integer(
        data_key="OTPSVC_FRAUD_PREFIX_DIGITS", load_default=3, validate=validate.Range(1, 6)
    )
    fraud_min_sends = fields.Integer(
        data_key="OTPSVC_FRAUD_MIN_SENDS", load_default=20, validate=validate.Range(2, 100000)
    )
    fraud_window = fields.Integer(
        data_key="OTPSVC_FRAUD_WINDOW", load_default=3600, validate=validate.Range(300, 86400)
    )
    fraud_min_conversion = fields.Float(
        data_key="OTPSVC_FRAUD_MIN_CONVERSION",
        load_default=0.2,
        validate=validate.Range(0.0, 1.0, min_inclusive=False, max_inclusive=False),
    )
    fraud_grace = fields.Integer(
        data_key="OTPSVC_FRAUD_GRACE", load_default=120, validate=validate.Range(1, 3600)
    )
    fraud_suspensions = fields.String(
        data_key="OTPSVC_FRAUD_SUSPENSIONS", load_default="900,3600,43200"
    )
    currency = fields.String(
        data_key="OTPSVC_CURRENCY",
        load_default=None,
        validate=validate.Regexp(CURRENCY, error="an ISO 4217 code in capitals, such as EUR"),
    )
    prices_file = fields.String(data_key="OTPSVC_PRICES_FILE", load_default=None)
    budget = fields.String(data_key="OTPSVC_BUDGET", load_default=None, validate=_money_budget)
    log_level = fields.String(
        data_key="OTPSVC_LOG_LEVEL",
        load_default="INFO",
        validate=validate.OneOf(["DEBUG", "INFO", "WARNING", "ERROR"]),
    )

    @validates("api_keys")
    def _check_api_keys(self, value: str, **_: object) -> None:
        parse_api_keys(value)

    @validates("operator_keys")
    def _check_operator_keys(self, value: str | None, **_: object) -> None:
        if value:
            parse_api_keys(value)

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
        parse_fallbacks(value)

    @validates("trusted_proxy_networks")
    def _check_networks(self, value: str, **_: object) -> None:
        parse_networks(value)

    @validates("test_numbers")
    def _check_test_numbers(self, value: str, **_: object) -> None:
        parse_test_numbers(value)

    @validates("providers")
    def _check_providers(self, value: str, **_: object) -> None:
        names = split(value)
        if not names:
            raise ValidationError("name at least one provider")
        known_providers(names)

    @validates("fraud_suspensions")
    def _check_suspensions(self, value: str, **_: object) -> None:
        parse_suspensions(value)

    @validates("allowed_countries", "allowed_countries_voice", "allowed_countries_sms")
    def _check_countries(self, value: str | None, **_: object) -> None:
        parse_countries(value)

    @validates("allowed_number_types")
    def _check_number_types(self, value: str, **_: object) -> None:
        parse_number_types(value)

    @validates("routes")
    def _check_routes(self, value: str, **_: object) -> None:
        parse_routes(value)

    @validates("ladder")
    def _check_ladder(self, value: str, **_: object) -> None:
        parse_ladder(value)

    @validates("modes")
    def _check_modes(self, value: str, **_: object) -> None:
        parse_modes(value)

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
            concurrency=data.pop("argon2_concurrency"),
        )
        if "api_keys" in data:  # absent only from a partial load (see _load_the_rest)
            data["clients"] = parse_api_keys(data.pop("api_keys"))
        operator_keys = data.pop("operator_keys", None)
        data["operators"] = parse_api_keys(operator_keys) if operator_keys else ()
        data["secret_key_fallbacks"] = parse_fallbacks(data["secret_key_fallbacks"])
        data["test_numbers"] = parse_test_numbers(data["test_numbers"])
        data["trusted_proxy_networks"] = parse_networks(data["trusted_proxy_networks"])
        data["event_webhooks"] = parse_pairs(data["event_webhooks"], "OTPSVC_EVENT_WEBHOOKS")
        data["event_webhook_secrets"] = parse_multi_pairs(
            data["event_webhook_secrets"], "OTPSVC_EVENT_WEBHOOK_SECRETS"
        )
        if "providers" in data:
            data["providers"] = tuple(split(data["providers"]))
        data["routes"] = parse_routes(data["routes"])
        for name in ("allowed_countries", "allowed_countries_voice", "allowed_countries_sms"):
            data[name] = parse_countries(data[name])
        data["allowed_number_types"] = parse_number_types(data["allowed_number_types"])
        data["fraud_suspensions"] = parse_suspensions(data["fraud_suspensions"])
        data["modes"] = parse_modes(data["modes"])
        data["ladder"] = parse_ladder(data["ladder"])
        if data["public_url"]:
            data["public_url"] = data["public_url"].rstrip("/")
        if "secret_key" in data:
            data["secret_key"] = data["secret_key"].encode()
        return data
