"""Prometheus metrics, from ``prometheus-client``.

Names follow the Prometheus conventions (``otpsvc_`` prefix, ``_total`` counters, ``_seconds``
durations). Label values are bounded: countries are ISO codes from the allowlist (``other``
otherwise), never a number or an id; reasons and results are fixed words.

Under gunicorn the metrics of every worker are summed through ``prometheus-client``'s
multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR`` is set by the packaged ``gunicorn.conf.py`` before
the workers fork, and a worker that exits is marked dead there.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

STARTS = Counter(
    "otpsvc_verifications_started_total",
    "Starts by client, provider, country, mode and outcome (created, resent, escalated, "
    "refused, failed).",
    ["client", "provider", "country", "mode", "outcome"],
)
APPROVALS = Counter(
    "otpsvc_verifications_approved_total",
    "Approved verifications (a right code, key 1 or the matched digits), by client, provider and "
    "country.",
    ["client", "provider", "country"],
)
KEYPAD_ANSWERS = Counter(
    "otpsvc_keypad_answers_total",
    "How keypress- and match-mode calls were answered, by client, mode and answer (confirmed, "
    "matched, wrong_digits, denied, no_answer).",
    ["client", "mode", "answer"],
)
CHECKS = Counter(
    "otpsvc_checks_total",
    "Checks by client and result: approved, wrong_code, locked, not_found, invalid.",
    ["client", "result"],
)
CALLS = Counter(
    "otpsvc_calls_placed_total",
    "Calls (and SMS) a provider accepted, by client, provider and country.",
    ["client", "provider", "country"],
)
SPEND = Counter(
    "otpsvc_spend_total",
    "What the sends a provider took cost by the price file, in units of OTPSVC_CURRENCY, by "
    "provider, channel and country.",
    ["provider", "channel", "country"],
)
REPORTED_SPEND = Counter(
    "otpsvc_reported_spend_total",
    "What providers reported the sends they took cost (seven.io does), in units of the "
    "provider account's currency: to reconcile with otpsvc_spend_total.",
    ["provider", "currency"],
)
BREAKER_OPENINGS = Counter(
    "otpsvc_provider_breaker_openings_total",
    "Times a provider's circuit breaker opened (counted by the process whose failure opened it).",
    ["provider"],
)
PROVIDER_ERRORS = Counter(
    "otpsvc_provider_errors_total",
    "Provider requests that failed, by provider and reason.",
    ["provider", "reason"],
)
PROVIDER_SECONDS = Histogram(
    "otpsvc_provider_request_duration_seconds",
    "Time of each provider request.",
    ["provider"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 15, 30),
)
REFUSALS = Counter(
    "otpsvc_refusals_total",
    "Starts refused before any call, by client and reason: country, number_type, "
    "velocity_<limit>, kill_switch, kill_switch_client, providers_busy, and request limits "
    "(limit_<scope>; client none for failed authentication).",
    ["client", "reason"],
)
#: Every reason ``otpsvc_refusals_total`` counts, so that each series exists at 0 from the
#: start (see :func:`start_at_zero`).
REFUSAL_REASONS = (
    "country",
    "number_type",
    "kill_switch",
    "kill_switch_client",
    "providers_busy",
    *(
        f"velocity_{kind}"
        for kind in (
            "phone",
            "phone_all",
            "prefix",
            "prefix_all",
            "country",
            "country_all",
            "client",
            "ip",
            "user",
            "budget",
            "client_budget",
        )
    ),
    *(f"limit_{scope}" for scope in ("start_ip", "check_ip", "client", "auth_failures")),
    "limit_end_user_addresses",
    "spend_budget",
    "spend_budget_client",
    "prefix_suspended",
)
#: Every reason ``otpsvc_provider_errors_total`` counts (``voice.dispatch``).
PROVIDER_ERROR_REASONS = (
    "ambiguous",
    "http_5xx",
    "auth",
    "unavailable",
    "refused",
    "circuit_open",
)
DELIVERY_REPORTS = Counter(
    "otpsvc_delivery_reports_total",
    "Provider delivery reports by provider and status.",
    ["provider", "status"],
)
LADDER_STEPS = Counter(
    "otpsvc_ladder_steps_total",
    "Escalation steps taken, by what made them due (no-answer, busy, failed, timeout).",
    ["reason"],
)
#: The conversion rule's names (by target and scope) and the channels it judges: the labels of
#: the otpsvc_fraud_* metrics.
FRAUD_RULES = ("prefix", "country", "prefix_all", "country_all")
FRAUD_CHANNELS = ("voice", "sms")
FRAUD_WOULD_BLOCK = Counter(
    "otpsvc_fraud_would_block_total",
    "Sends placed in monitor mode that the conversion rule would have refused, by rule "
    "(prefix, country, prefix_all, country_all) and channel.",
    ["rule", "channel"],
)
FRAUD_BLOCKED = Counter(
    "otpsvc_fraud_blocked_total",
    "Sends refused by the conversion rule in enforce mode (429 prefix_suspended), by rule and "
    "channel.",
    ["rule", "channel"],
)
FRAUD_SUSPENSIONS = Counter(
    "otpsvc_fraud_suspensions_total",
    "Suspensions the conversion rule made (otpsvc worker), by rule and channel.",
    ["rule", "channel"],
)
FRAUD_SUSPENDED = Gauge(
    "otpsvc_fraud_suspended",
    "Suspensions of the conversion rule in force (otpsvc worker), by rule and channel.",
    ["rule", "channel"],
    multiprocess_mode="max",
)
LADDER_STOPS = Counter(
    "otpsvc_ladder_stops_total",
    "Escalation ladders ended by a refusal or an error, by the limit or error.",
    ["why"],
)
LADDER_CONVERSIONS = Counter(
    "otpsvc_ladder_conversions_total",
    "Approvals of verifications with a ladder, by the step whose call was answered (1 first).",
    ["step"],
)
EVENTS = Counter(
    "otpsvc_events_total",
    "Events to the apps by type and outcome (delivered, retry, failed).",
    ["type", "outcome"],
)
EVENT_DELIVERIES = Counter(
    "otpsvc_event_deliveries_total",
    "Delivery attempts of the event worker by client, event type and outcome (delivered, "
    "retry, failed).",
    ["client", "type", "outcome"],
)
EVENT_DELIVERY_SECONDS = Histogram(
    "otpsvc_event_delivery_seconds",
    "Time of each webhook request of the event worker.",
    ["client"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 15),
)
EVENTS_TRIMMED = Counter(
    "otpsvc_events_trimmed_total",
    "Delivered or given-up events the worker's trim dropped from the streams.",
)
BUILD_INFO = Gauge(
    "otpsvc_build_info",
    "Always 1; the labels say which otpsvc and Python this process runs.",
    ["version", "python"],
    multiprocess_mode="max",
)
STORE_ERRORS = Counter(
    "otpsvc_store_errors_total", "Redis did not answer (each is a 503 store_unavailable)."
)
HTTP_SECONDS = Histogram(
    "otpsvc_http_request_duration_seconds",
    "HTTP requests by client (none before authentication), endpoint and status.",
    ["client", "endpoint", "code"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
SETTINGS_REFUSED = Gauge(
    "otpsvc_settings_refused",
    "1 while the last reload (SIGHUP) of this process's settings was refused: it runs on the "
    "last good ones, not on what the environment and files now say.",
    multiprocess_mode="livemax",
)
ARGON2_SECONDS = Histogram(
    "otpsvc_argon2_duration_seconds",
    "Time of each argon2 run, by operation (hash, verify).",
    ["operation"],
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5),
)
ARGON2_CPU = Counter(
    "otpsvc_argon2_cpu_seconds_total",
    "CPU time of the argon2 runs, by operation: the share of the workers' CPU that hashing takes.",
    ["operation"],
)


@contextmanager
def argon2_run(operation: str) -> Iterator[None]:
    """Time one argon2 run: its wall time in the histogram, its thread's CPU in the counter."""
    began, cpu = time.perf_counter(), time.thread_time()
    try:
        yield
    finally:
        ARGON2_SECONDS.labels(operation).observe(time.perf_counter() - began)
        ARGON2_CPU.labels(operation).inc(time.thread_time() - cpu)


@contextmanager
def timed(histogram: Histogram, **labels: str) -> Iterator[None]:
    began = time.perf_counter()
    try:
        yield
    finally:
        histogram.labels(**labels).observe(time.perf_counter() - began)


@dataclass(frozen=True)
class SharedState:
    """What every worker shares through Redis, read at scrape time (not as one worker last
    saw it): the call budgets used per window, the kill switch, each provider's breaker, the
    event workers alive and the events' backlog."""

    #: (window seconds, calls in it, limit) for each window of the call budget.
    budget: list[tuple[int, int, int]]
    #: Since when calls are suspended (epoch seconds), or None.
    suspended_since: float | None
    #: Provider name -> whether its circuit breaker is open now.
    breakers: dict[str, bool]
    #: Client name -> (window seconds, calls in it, limit) of its own call budget.
    client_budgets: dict[str, list[tuple[int, int, int]]] = field(default_factory=dict)
    #: Event workers seen in the last half minute; None when this deployment needs none.
    workers: int | None = None
    #: (events not yet delivered, age of the oldest in seconds), or None when not read.
    backlog: tuple[int, float] | None = None
    #: The budgets in money: (period, spent, limit) of every client's together, and per client
    #: of its own.
    spend: list[tuple[str, int, int]] = field(default_factory=list)
    client_spend: dict[str, list[tuple[str, int, int]]] = field(default_factory=dict)


class SharedStateCollector(Collector):
    """The :class:`SharedState` as gauges, and ``otpsvc_store_up``: 1 when it was read, 0 when
    Redis did not answer. Then nothing else is reported for them (a scrape must not fail, and a
    stale value would lie)."""

    def __init__(self, read: Callable[[], SharedState]) -> None:
        self.read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            state = self.read()
        except Exception:
            state = None
        yield GaugeMetricFamily(
            "otpsvc_store_up",
            "1 when this scrape could read Redis, 0 when it did not answer.",
            value=0 if state is None else 1,
        )
        if state is None:
            return
        yield from _budget_families(state)
        yield GaugeMetricFamily(
            "otpsvc_calls_suspended",
            "1 while every call is suspended (the kill switch, or OTPSVC_CALLS_ENABLED=false).",
            value=0 if state.suspended_since is None else 1,
        )
        if state.suspended_since is not None:
            yield GaugeMetricFamily(
                "otpsvc_calls_suspended_since_seconds",
                "Since when calls are suspended (Unix time; for OTPSVC_CALLS_ENABLED=false, "
                "since this process started).",
                value=state.suspended_since,
            )
        breakers = GaugeMetricFamily(
            "otpsvc_provider_breaker_open",
            "1 while a provider's circuit breaker is open, as every worker sees it in Redis.",
            labels=["provider"],
        )
        for name, is_open in sorted(state.breakers.items()):
            breakers.add_metric([name], 1 if is_open else 0)
        yield breakers
        if state.workers is not None:
            yield GaugeMetricFamily(
                "otpsvc_event_workers",
                "Event workers (otpsvc worker) seen at Redis in the last 30 seconds.",
                value=state.workers,
            )
        if state.backlog is not None:
            yield from _backlog_families(*state.backlog)


def _ratio_family(
    name: str, text: str, labels: list[str], rows: Iterable[tuple[list[str], int, int]]
) -> GaugeMetricFamily:
    """A gauge of used over limit per label set (0 where there is no limit)."""
    family = GaugeMetricFamily(name, text, labels=labels)
    for values, used, limit in rows:
        family.add_metric(values, used / limit if limit else 0.0)
    return family


def _budget_families(state: SharedState) -> Iterator[GaugeMetricFamily]:
    yield _ratio_family(
        "otpsvc_call_budget_used_ratio",
        "Calls placed in the window over the call budget of every client together.",
        ["window"],
        (([str(window)], used, limit) for window, used, limit in state.budget),
    )
    yield _ratio_family(
        "otpsvc_client_call_budget_used_ratio",
        "Calls placed for a client in the window over its own call budget (clients with one).",
        ["client", "window"],
        (
            ([client, str(window)], used, limit)
            for client, windows in sorted(state.client_budgets.items())
            for window, used, limit in windows
        ),
    )
    yield _ratio_family(
        "otpsvc_spend_budget_used_ratio",
        "Money spent in this calendar period over the budget in money of every client together.",
        ["period"],
        (([period], used, limit) for period, used, limit in state.spend),
    )
    yield _ratio_family(
        "otpsvc_client_spend_budget_used_ratio",
        "Money spent for a client in this calendar period over its own budget in money.",
        ["client", "period"],
        (
            ([client, period], used, limit)
            for client, periods in sorted(state.client_spend.items())
            for period, used, limit in periods
        ),
    )


def _backlog_families(waiting: int, oldest_age: float) -> Iterator[GaugeMetricFamily]:
    yield GaugeMetricFamily(
        "otpsvc_events_backlog", "Events in the stream not yet delivered.", value=waiting
    )
    yield GaugeMetricFamily(
        "otpsvc_events_oldest_age_seconds",
        "Age of the oldest event not yet delivered (0 when none waits).",
        value=oldest_age,
    )


class BacklogCollector(Collector):
    """The event stream's backlog at scrape time (the worker's own port): events waiting (new
    and pending) and the age of the oldest one; nothing when Redis does not answer."""

    def __init__(self, read: Callable[[], tuple[int, float]]) -> None:
        self.read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            waiting, oldest_age = self.read()
        except Exception:
            return
        yield from _backlog_families(waiting, oldest_age)


def exposition(extra: Collector | None = None) -> tuple[bytes, str]:
    """The text format of every worker's metrics (multiprocess mode) or this process's, then
    ``extra``'s (metric families in the text format may follow one another)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        text = generate_latest(registry)
    else:
        text = generate_latest(REGISTRY)
    if extra is not None:
        own = CollectorRegistry()
        own.register(extra)
        text += generate_latest(own)
    return text, CONTENT_TYPE_LATEST


def country_label(region: str | None, allowed: frozenset[str] | None) -> str:
    """A bounded country label: the ISO code when calls may go there, else ``other``."""
    if region and (allowed is None or region in allowed):
        return region
    return "other"


#: The API clients a deployment knows (set by :func:`start_at_zero`): a client label takes one
#: of them, ``none`` or ``other``, so its values are bounded by the configuration.
KNOWN_CLIENTS: frozenset[str] = frozenset()


def client_label(client: str | None) -> str:
    """A bounded client label: a configured client's name, ``none`` when no client is known
    (failed authentication), ``other`` for a name no longer configured (an old record)."""
    if not client:
        return "none"
    return client if client in KNOWN_CLIENTS else "other"


def start_at_zero(providers: Iterable[str], clients: Iterable[str] = ()) -> None:
    """Make every series of the counters that alerts watch exist at 0 for its known labels: each
    client's refusals and starts, each provider's errors and breaker openings. A labelled counter
    otherwise appears only at its first increment, and an alert's ``increase()`` over a burst
    that begins with that increment reads 0: the first burst of prefix refusals, or a
    provider's first failures, would go unseen."""
    global KNOWN_CLIENTS
    KNOWN_CLIENTS = frozenset(clients)
    names = list(providers)
    for client in sorted(KNOWN_CLIENTS):
        for reason in REFUSAL_REASONS:
            REFUSALS.labels(client, reason)
    for scope in ("auth_failures", "start_ip", "check_ip"):
        REFUSALS.labels("none", f"limit_{scope}")
    for rule in FRAUD_RULES:
        for channel in FRAUD_CHANNELS:
            FRAUD_WOULD_BLOCK.labels(rule, channel)
            FRAUD_BLOCKED.labels(rule, channel)
    for provider in names:
        BREAKER_OPENINGS.labels(provider)
        for reason in PROVIDER_ERROR_REASONS:
            PROVIDER_ERRORS.labels(provider, reason)
