"""The settings as the service uses them: frozen dataclasses, read once."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import phonenumbers

from otpsvc.money import PriceBook

CLIENT_NAME = re.compile(r"\A[A-Za-z0-9_.-]{1,32}\Z")
#: A brand a call speaks: letters of any script, ASCII digits, spaces and . & ' -. Not other
#: scripts' digits: a brand of Arabic-Indic or full-width digits would be read out as a number
#: beside the code.
BRAND = r"\A(?:[^\W\d]|[0-9 .&'-]){1,40}\Z"


MAX_CODE_TTL = 600


@dataclass(frozen=True)
class Argon2Params:
    """argon2id cost. Defaults measured on a 2-core machine: about 10 ms a verify
    (docs/scaling.md)."""

    memory_kib: int = 16384
    time_cost: int = 1
    parallelism: int = 1
    #: argon2 runs one process makes at once; more wait their turn. argon2 is CPU-bound, so
    #: more runs than cores gain nothing, while each holds ``memory_kib`` of memory.
    concurrency: int = 2


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
    #: The modes a start may ask for (``code``, ``keypress``, ``match``).
    modes: frozenset[str] = frozenset({"code", "keypress", "match"})
    #: A start may name the brand its call speaks (resellers); off unless a client allows it.
    request_brand: bool = False
    #: The client file (``OTPSVC_CLIENTS_FILE``): per-client policies and spoken scripts.
    clients_file: str | None = None
    #: The escalation ladder: the steps a verification's calls take until one is answered
    #: (empty: one call, by the routes, as without a ladder).
    ladder: tuple[LadderStep, ...] = ()
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
    #: End users (addresses) one client's per-person request limits may be kept for in an hour:
    #: each costs about 540 bytes of Redis for the hour, so a client inventing addresses
    #: cannot fill Redis (past it, a request for a new end user is 429 until the next hour).
    end_user_addresses_max: int = 100_000
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
    #: Narrower lists for one channel (a country must be in both); None: as allowed_countries.
    allowed_countries_voice: frozenset[str] | None = None
    allowed_countries_sms: frozenset[str] | None = None
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
    #: Who calls with the API key: ``backend`` (the app's server, which vouches for its end
    #: user in ``end_user``) or ``gateway`` (which passes the end user's own request through, so
    #: nothing in the body names the person: their address is the connection's through the
    #: trusted proxies, their id the ``end_user_id_header`` the gateway sets).
    caller: str = "backend"
    #: The header a gateway client's gateway names the authenticated end user in.
    end_user_id_header: str = "X-End-User-Id"
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
    #: How long a start may wait for a provider slot of its worker when all are taken (the
    #: other worker's may be free): a slot frees when a provider call ends. At most half of
    #: ``provider_read_timeout`` is used.
    provider_slot_wait: float = 2.0
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
    #: Days an event given up is kept for ``otpsvc events failed`` and ``events replay``.
    event_failed_days: int = 14
    #: When set, GET /metrics needs "Authorization: Bearer <token>".
    metrics_token: str | None = field(default=None, repr=False)
    #: Keys that read every client's insights (``OTPSVC_OPERATOR_KEYS``, name:key like the API
    #: keys); they start no verification.
    operators: tuple[ApiClient, ...] = field(default=(), repr=False)
    #: Days the funnel's daily rollups are kept; 0 counts nothing.
    insights_days: int = 35
    #: The conversion rule (see docs/fraud.md): ``monitor`` reports what it would refuse,
    #: ``enforce`` refuses, ``off`` neither (per client too); its thresholds are everyone's.
    fraud_mode: str = "monitor"
    #: Digits after the calling code that make a number's prefix (for the rule and the funnel).
    fraud_prefix_digits: int = 3
    fraud_min_sends: int = 20
    #: Seconds of sends the rule judges.
    fraud_window: int = 3600
    fraud_min_conversion: float = 0.2
    #: Seconds a send has to convert before it counts as not converted.
    fraud_grace: int = 120
    #: Seconds each suspension lasts, by repeat (the last repeats).
    fraud_suspensions: tuple[int, ...] = (900, 3600, 43200)
    #: The accounting currency (ISO 4217) of the price file and the money budgets.
    currency: str | None = None
    #: The price file (see :mod:`otpsvc.config.prices`), and what it holds.
    prices_file: str | None = None
    prices: PriceBook | None = field(default=None, repr=False)
    #: A money budget ("50.00 per day;1000 per month"): of every client together, or (in a
    #: client's table) the client's own.
    budget: str | None = None

    #: Per API client of the client file, its settings: these with what its table sets.
    client_settings: Mapping[str, Settings] = field(default_factory=dict, repr=False)
    #: Per API client of the client file, the keys its table sets.
    client_keys: Mapping[str, frozenset[str]] = field(default_factory=dict)
    #: The client file's spoken scripts: per client ("" for every client), per locale, per
    #: kind (``code``, ``keypress``, ``match``, ``sms``), the template.
    templates: Mapping[str, Mapping[str, Mapping[str, str]]] = field(default_factory=dict)

    def for_client(self, client: str) -> Settings:
        """What applies to ``client``: its table of the client file over these settings."""
        return self.client_settings.get(client, self)

    @property
    def all_providers(self) -> tuple[str, ...]:
        """Every provider named by the default order or a route (a client's too), once, in
        first-seen order."""
        names = named_providers(self.providers, self.routes, self.ladder)
        for own in self.client_settings.values():
            names = tuple(dict.fromkeys([*names, *own.all_providers]))
        return names


@dataclass(frozen=True)
class LadderStep:
    """One step of an escalation ladder: a call on ``channel`` by ``provider``, then ``after``
    seconds for the person before the next step (the last step's is not used)."""

    channel: str
    provider: str
    after: int = 45

    def __str__(self) -> str:
        return f"{self.channel}:{self.provider}/{self.after}"

    @classmethod
    def parse(cls, entry: str) -> LadderStep:
        """A step as :meth:`__str__` writes it (``voice:termii/45``; without ``/seconds`` the
        default wait). It checks nothing: settings go through ``parse_ladder``."""
        what, slash, wait = entry.strip().partition("/")
        channel, _, provider = what.partition(":")
        return cls(channel, provider, int(wait)) if slash else cls(channel, provider)


def ladder_of(spec: str) -> tuple[LadderStep, ...]:
    """A ladder as a verification keeps it (field ``ld``: its steps, comma separated)."""
    return tuple(LadderStep.parse(entry) for entry in spec.split(",") if entry.strip())


def named_providers(
    default: tuple[str, ...],
    routes: Mapping[int, tuple[str, ...]],
    ladder: tuple[LadderStep, ...] = (),
) -> tuple[str, ...]:
    """Every provider named by the default order, a route or a ladder step, once, in
    first-seen order."""
    names = [
        *default,
        *(name for route in routes.values() for name in route),
        *(step.provider for step in ladder),
    ]
    return tuple(dict.fromkeys(names))


def variable(name: str) -> str:
    """The environment variable of a setting (``code_length``: ``OTPSVC_CODE_LENGTH``)."""
    return f"OTPSVC_{name.upper()}"
