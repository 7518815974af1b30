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
    "Starts by provider, country, mode and outcome (created, resent, refused, failed).",
    ["provider", "country", "mode", "outcome"],
)
APPROVALS = Counter(
    "otpsvc_verifications_approved_total",
    "Approved verifications (a right code or key 1), by provider and country.",
    ["provider", "country"],
)
CHECKS = Counter(
    "otpsvc_checks_total",
    "Checks by result: approved, wrong_code, locked, not_found, invalid.",
    ["result"],
)
CALLS = Counter("otpsvc_calls_placed_total", "Calls a provider accepted.", ["provider"])
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
BREAKER_OPEN = Gauge(
    "otpsvc_provider_breaker_open",
    "1 while a provider's circuit breaker is open (as this worker last saw it).",
    ["provider"],
    multiprocess_mode="max",
)
REFUSALS = Counter(
    "otpsvc_refusals_total",
    "Starts refused before any call: country, number_type, velocity_<limit>, budget, "
    "kill_switch, and request limits (limit_<scope>).",
    ["reason"],
)
DELIVERY_REPORTS = Counter(
    "otpsvc_delivery_reports_total",
    "Provider delivery reports by provider and status.",
    ["provider", "status"],
)
EVENTS = Counter(
    "otpsvc_events_total",
    "Events to the apps by type and outcome (queued, delivered, retry, failed, lost).",
    ["type", "outcome"],
)
STORE_ERRORS = Counter(
    "otpsvc_store_errors_total", "Redis did not answer (each is a 503 store_unavailable)."
)
HTTP_SECONDS = Histogram(
    "otpsvc_http_request_duration_seconds",
    "HTTP requests by endpoint and status.",
    ["endpoint", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
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


class BudgetCollector(Collector):
    """The share of the call budget used in each window, read from Redis at scrape time."""

    def __init__(self, used: Callable[[], Iterable[tuple[int, int, int]]]) -> None:
        self.used = used

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "otpsvc_call_budget_used_ratio",
            "Calls placed in the window over the call budget of that window.",
            labels=["window"],
        )
        try:
            for window, used, limit in self.used():
                family.add_metric([str(window)], used / limit if limit else 0.0)
        except Exception:
            return
        yield family


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
