"""Liveness, readiness and the API contract."""

from __future__ import annotations

from importlib import resources

from flask import Blueprint, Response, jsonify

from otpsvc.api.context import runtime

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """The process is alive; says nothing about its dependencies."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    """Redis answers. Warns when Redis may evict keys: eviction silently resets attempt counters."""
    store = runtime().store
    store.ping()
    warnings = []
    policy = store.eviction_policy()
    if policy != "noeviction":
        warnings.append(
            f"redis maxmemory-policy is {policy or 'unknown'}; set noeviction so that attempt "
            "counters and limits are never evicted"
        )
    return jsonify({"status": "ready", "redis": "ok", "warnings": warnings})


@bp.get("/openapi.yaml")
def openapi() -> Response:
    text = resources.files("otpsvc").joinpath("openapi.yaml").read_text()
    return Response(text, mimetype="application/yaml")
