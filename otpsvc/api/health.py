"""Liveness, readiness and the API contract."""

from __future__ import annotations

import hmac
from importlib import resources

from flask import Blueprint, Response, jsonify, request

from otpsvc import metrics
from otpsvc.api.context import count_failed_authentication, runtime
from otpsvc.errors import StoreUnavailable, Unauthorized

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """The process is alive; says nothing about its dependencies."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    """Readiness: this process can take requests. Redis's state is reported, not judged.

    Every pod shares one Redis, so a readiness that failed with Redis would take every pod out
    of the Service at once, and callers would get connection errors instead of fast, clear
    ``503 store_unavailable`` answers (Kubernetes' guidance: readiness should not fail on a
    dependency all pods share). ``?deep=1`` judges it: 503 while Redis does not answer or
    refuses writes, for an operator or a load balancer in front of one instance. Warns when
    Redis may evict keys: eviction silently resets attempt counters.
    """
    store = runtime().store
    deep = request.args.get("deep") in ("1", "true")
    warnings = []
    try:
        store.check_writable()
    except StoreUnavailable as exc:
        if deep:
            raise
        return jsonify({"status": "ready", "redis": "unavailable", "warnings": [exc.detail]})
    policy = store.eviction_policy()
    if policy != "noeviction":
        warnings.append(
            f"redis maxmemory-policy is {policy or 'unknown'}; set noeviction so that attempt "
            "counters and limits are never evicted"
        )
    return jsonify({"status": "ready", "redis": "ok", "warnings": warnings})


@bp.get("/metrics")
def metrics_view() -> Response:
    """Prometheus text format; behind a bearer token when OTPSVC_METRICS_TOKEN is set."""
    rt = runtime()
    token = rt.settings.metrics_token
    if token:
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        expected = token.encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            expected, presented.strip().encode("utf-8", "surrogateescape")
        ):
            # Guessed like an API key, so limited like one.
            count_failed_authentication()
            raise Unauthorized("send the metrics token as 'Authorization: Bearer <token>'")
    velocity = rt.service.velocity
    budget = metrics.BudgetCollector(
        lambda: velocity.budget_used(rt.settings.call_budget, int(rt.service.clock() * 1000))
    )
    text, content_type = metrics.exposition(budget)
    return Response(text, content_type=content_type)


@bp.get("/openapi.yaml")
def openapi() -> Response:
    text = resources.files("otpsvc").joinpath("openapi.yaml").read_text()
    return Response(text, mimetype="application/yaml")
