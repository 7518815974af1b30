"""The application factory: the one place an otpsvc app is built. Nothing connects at import."""

from __future__ import annotations

import logging
import platform
import time
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

from flask import Flask, redirect
from flask.json.provider import DefaultJSONProvider

from otpsvc import metrics
from otpsvc.api import dev, docs, health, insights, otp, problems, tracing, webhooks
from otpsvc.api.context import Runtime
from otpsvc.api.limits import RequestLimits
from otpsvc.api.proxies import TrustedProxies
from otpsvc.config import Settings, load_settings
from otpsvc.config.loading import UNGUARDED_METRICS
from otpsvc.config.providers import providers_for
from otpsvc.core.abuse import AbusePolicy
from otpsvc.core.fraud import conversion_for
from otpsvc.core.keyring import Keyring
from otpsvc.core.ladder import lease_ms_for
from otpsvc.core.service import Policy, VerificationService
from otpsvc.dev.inbox import CallInbox
from otpsvc.events import EventQueue, EventSettings
from otpsvc.logs import JsonFormatter, RequestIdFilter
from otpsvc.phones import mask_e164 as mask
from otpsvc.store import VerificationStore, connect, parse_redis_url
from otpsvc.store.breaker import BreakerStore
from otpsvc.store.clock import RedisClock
from otpsvc.store.connection import RedisClient
from otpsvc.store.conversion import ConversionStore
from otpsvc.store.idempotency import IdempotencyStore
from otpsvc.store.rollups import Rollups
from otpsvc.store.velocity import VelocityStore
from otpsvc.voice.dispatch import Bulkhead, Dispatcher

MAX_BODY_BYTES = 16 * 1024


class JsonProvider(DefaultJSONProvider):
    """Flask's JSON, with a body nested too deeply to parse treated as any other bad JSON (400),
    instead of a RecursionError (500) with a traceback in the log."""

    sort_keys = False

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        try:
            return super().loads(s, **kwargs)
        except RecursionError as exc:
            raise ValueError("the JSON is nested too deeply") from exc


class _Flask(Flask):
    json_provider_class = JsonProvider


def create_app(
    config: Mapping[str, Any] | None = None,
    *,
    clock: Callable[[], float] | None = None,
    api: bool = True,
) -> Flask:
    """Build the app from ``OTPSVC_*`` settings (the environment, or ``config`` in tests).

    ``clock`` is the service's one clock; by default the local clock corrected to the Redis
    server's, so every worker on every host counts windows and expiries alike. ``api=False``:
    for ``otpsvc worker``, which serves no API (no warning about the API's /metrics).
    """
    settings = load_settings(config)
    _configure_logging(settings)
    metrics.BUILD_INFO.labels(metadata.version("otpsvc"), platform.python_version()).set(1)
    log = logging.getLogger("otpsvc")
    for name in settings.unknown:
        log.warning("unknown setting %s is ignored", name)
    for warning in settings.warnings:
        if api or warning != UNGUARDED_METRICS:
            log.warning("%s", warning)

    app = _Flask("otpsvc")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    if settings.trusted_proxies:
        app.wsgi_app = TrustedProxies(  # type: ignore[method-assign]
            app.wsgi_app, settings.trusted_proxies, settings.trusted_proxy_networks
        )
    client = connect(
        settings.redis_url,
        socket_timeout=settings.redis_socket_timeout,
        connect_timeout=settings.redis_connect_timeout,
        tls=settings.redis_tls.options(),
    )
    if clock is None:
        clock = RedisClock(client)
    _warn_expired_test_numbers(settings, clock, log)
    app.extensions["otpsvc"] = _runtime(settings, client, clock)
    _register(app, settings)
    return app


def _runtime(settings: Settings, client: RedisClient, clock: Callable[[], float]) -> Runtime:
    """Every part of an app, on one Redis client and one clock."""
    # Sentinel and Cluster deployments have replicas: a check's attempt must reach one.
    replicated = parse_redis_url(settings.redis_url).kind != "single"
    event_settings = EventSettings.from_settings(settings)
    store = VerificationStore(
        client,
        settings.redis_prefix,
        wait_ms=settings.redis_wait_ms if replicated else 0,
        # The scripts that change a verification write its client's events in the same step.
        events=event_settings.options(),
    )
    keyring = Keyring(settings.secret_key, settings.argon2, settings.secret_key_fallbacks)
    inbox = (
        CallInbox(client, settings.redis_prefix, keyring.phone_key) if settings.dev_mode else None
    )
    dispatcher = _dispatcher(settings, client, clock, inbox)
    service = _service(settings, client, clock, store, keyring, dispatcher)
    return Runtime(
        settings=settings,
        redis=client,
        store=store,
        service=service,
        dispatcher=dispatcher,
        request_limits=RequestLimits(client, settings, clock, keyring.subject_key),
        idempotency=IdempotencyStore(
            client,
            settings.redis_prefix,
            settings.idempotency_ttl,
            max_keys=settings.idempotency_max_keys,
            clock=clock,
        ),
        inbox=inbox,
        events=EventQueue(client, settings.redis_prefix, event_settings),
        rollups=rollups_for(settings, client, clock, service.conversion),
    )


def fold_task(rollups: Rollups) -> Callable[[], None]:
    """A worker's task: fold the outcome entries (at most once a second), and count what the
    conversion rule decided in the worker's metrics (the suspensions in force, every 10 s)."""
    next_count = 0.0

    def fold() -> None:
        nonlocal next_count
        rollups.tick()
        made, rollups.made = rollups.made, []
        for suspension in made:
            metrics.FRAUD_SUSPENSIONS.labels(suspension.rule, suspension.channel).inc()
        conversion = rollups.conversion
        if conversion is not None and (made or time.monotonic() >= next_count):
            next_count = time.monotonic() + 10.0
            counts = Counter(
                (s.rule, s.channel) for s in conversion.suspensions(int(rollups.clock() * 1000))
            )
            for rule in metrics.FRAUD_RULES:
                for channel in metrics.FRAUD_CHANNELS:
                    metrics.FRAUD_SUSPENDED.labels(rule, channel).set(counts[(rule, channel)])

    return fold


def rollups_for(
    settings: Settings,
    client: RedisClient,
    clock: Callable[[], float],
    conversion: ConversionStore | None = None,
) -> Rollups:
    """What reads the outcome entries: the funnel's rollups and the conversion rule (the
    service's store of it when given, else one of its own)."""
    return Rollups(
        client,
        settings.redis_prefix,
        days=settings.insights_days,
        conversion=conversion or conversion_for(settings, client),
        clock=clock,
    )


def _dispatcher(
    settings: Settings, client: RedisClient, clock: Callable[[], float], inbox: CallInbox | None
) -> Dispatcher:
    """The providers, their routes, their shared breakers and this process's bulkhead."""
    providers = providers_for(settings, inbox)
    metrics.start_at_zero(providers, [c.name for c in settings.clients])
    breaker = BreakerStore(
        client,
        settings.redis_prefix,
        threshold=settings.breaker_threshold,
        window_ms=settings.breaker_window * 1000,
        cooloff_ms=settings.breaker_cooloff * 1000,
    )
    bulkhead = Bulkhead(
        settings.provider_concurrency,
        # Well under a provider call's own bound: at most half its read timeout.
        wait=min(settings.provider_slot_wait, settings.provider_read_timeout / 2),
        # One thread of the worker always stays free for checks, webhooks and probes.
        waiters=max(0, settings.worker_threads - settings.provider_concurrency - 1),
    )
    return Dispatcher(providers, settings.providers, settings.routes, breaker, clock, bulkhead)


def _service(
    settings: Settings,
    client: RedisClient,
    clock: Callable[[], float],
    store: VerificationStore,
    keyring: Keyring,
    dispatcher: Dispatcher,
) -> VerificationService:
    """The verification service, with every client's own policy beside the global one."""
    service = VerificationService(
        store=store,
        keyring=keyring,
        dispatcher=dispatcher,
        policy=Policy.from_settings(settings),
        abuse=AbusePolicy.from_settings(settings),
        velocity=VelocityStore(client, settings.redis_prefix),
        clock=clock,
        test_numbers={number.e164: number for number in settings.test_numbers},
        allowed_countries=_all_countries(settings),
        client_policies={
            name: Policy.from_settings(own, settings.client_keys[name])
            for name, own in settings.client_settings.items()
        },
        client_abuse={
            name: AbusePolicy.for_client(settings, own, settings.client_keys[name])
            for name, own in settings.client_settings.items()
        },
        conversion=conversion_for(settings, client),
    )
    service.ladder_lease_ms = lease_ms_for(
        settings.provider_connect_timeout,
        settings.provider_read_timeout,
        len(settings.all_providers),
    )
    return service


def _register(app: Flask, settings: Settings) -> None:
    """The request hooks and the blueprints (the dev ones in dev mode only)."""
    tracing.register(app)
    problems.register(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(otp.bp)
    app.register_blueprint(insights.bp)
    app.register_blueprint(webhooks.bp)
    app.register_blueprint(docs.bp)
    if settings.dev_mode:
        app.register_blueprint(dev.api)
        app.register_blueprint(dev.page)
        app.register_blueprint(dev.console_hooks)
        app.add_url_rule("/", "dev_root", lambda: redirect("/dev"))


def _all_countries(settings: Settings) -> frozenset[str] | None:
    """Every country some client may call (the label set of the metrics by country)."""
    countries = settings.allowed_countries
    for own in settings.client_settings.values():
        if countries is None or own.allowed_countries is None:
            return None
        countries = countries | own.allowed_countries
    return countries


def _warn_expired_test_numbers(
    settings: Settings, clock: Callable[[], float], log: logging.Logger
) -> None:
    """A test number past its last day is an ordinary number again; say so at every start."""
    if not settings.test_numbers:
        return  # no clock read (a Redis TIME by default) for nothing
    today = datetime.fromtimestamp(clock(), UTC).date()
    for number in settings.test_numbers:
        if not number.active_on(today):
            log.warning(
                "test number %s expired on %s: it is an ordinary number again; remove it from "
                "OTPSVC_TEST_NUMBERS",
                mask(number.e164),
                number.last_day.isoformat(),
            )


def _configure_logging(settings: Settings) -> None:
    """JSON lines on stderr for the ``otpsvc`` loggers, unless the host set up logging itself."""
    logger = logging.getLogger("otpsvc")
    logger.setLevel(settings.log_level)
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        handler.addFilter(RequestIdFilter())
        logger.addHandler(handler)
