"""Liveness, readiness and the API contract."""

from __future__ import annotations

import hmac
import re
import time
from collections.abc import Collection
from importlib import resources

from flask import Blueprint, Response, jsonify, request

from otpsvc import metrics
from otpsvc.api.context import count_failed_authentication, runtime
from otpsvc.api.proxies import VIA_TRUSTED_PROXY
from otpsvc.api.webhooks import webhooks_enabled
from otpsvc.errors import NotFound, StoreUnavailable, Unauthorized
from otpsvc.store.velocity import Counter, VelocityStore

bp = Blueprint("health", __name__)

#: Said by /readyz and check-config when Redis keeps nothing across a restart.
NO_PERSISTENCE = (
    "redis has no persistence (no AOF, no RDB snapshots): a restart forgets the kill switch, "
    "the call budget, the velocity windows, blocks, failure caps, pending verifications and "
    "failed events; enable AOF (appendonly yes, appendfsync everysec)"
)


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
    suspended = _suspended_since() is not None
    if suspended:
        warnings.append("calls are suspended (otpsvc calls status says by whom and why)")
    # Dev mode's bundled Redis keeps nothing on purpose: no warning there.
    if not runtime().settings.dev_mode and store.persistence() == "none":
        warnings.append(NO_PERSISTENCE)
    policy = store.eviction_policy()
    if policy != "noeviction":
        warnings.append(
            f"redis maxmemory-policy is {policy or 'unknown'}; set noeviction so that attempt "
            "counters and limits are never evicted"
        )
    return jsonify(
        {
            "status": "ready",
            "redis": "ok",
            "calls": "suspended" if suspended else "enabled",
            "warnings": warnings,
        }
    )


@bp.get("/metrics")
def metrics_view() -> Response:
    """Prometheus text format; behind a bearer token when OTPSVC_METRICS_TOKEN is set.

    Without a token it answers only a scraper that connects directly (Prometheus scrapes each
    pod): a request that a gateway or ingress forwarded (from a trusted proxy) gets 404, so an
    operator surface never shows on the public port by default."""
    rt = runtime()
    token = rt.settings.metrics_token
    if not token and request.environ.get(VIA_TRUSTED_PROXY):
        raise NotFound("/metrics is not served through a proxy without OTPSVC_METRICS_TOKEN")
    if token:
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        expected = token.encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            expected, presented.strip().encode("utf-8", "surrogateescape")
        ):
            # Guessed like an API key, so limited like one.
            count_failed_authentication()
            raise Unauthorized("send the metrics token as 'Authorization: Bearer <token>'")
    text, content_type = metrics.exposition(metrics.SharedStateCollector(_shared_state))
    return Response(text, content_type=content_type)


#: When this process started: since when OTPSVC_CALLS_ENABLED=false has held its calls.
_STARTED = time.time()


def _suspended_since() -> float | None:
    """Since when every call is suspended: the kill switch's time (for the setting, since this
    process started); None when calls go."""
    rt = runtime()
    if not rt.settings.calls_enabled:
        return _STARTED
    state = rt.service.velocity.kill_state()
    return None if state is None else float(state.get("since") or _STARTED)


def _shared_state() -> metrics.SharedState:
    """The state every worker shares, read from Redis now (the breakers through their
    once-a-second cache)."""
    rt = runtime()
    now = rt.service.clock()
    now_ms = int(now * 1000)
    open_until = rt.dispatcher.breaker.open_until(list(rt.settings.all_providers))
    velocity = rt.service.velocity
    client_budgets = {
        name: velocity.budget_used(abuse.own_budget, now_ms, kind="client_budget", who=name)
        for name, abuse in rt.service.client_abuse.items()
        if abuse.own_budget
    }
    # A deployment needs a worker when a client has a webhook or a ladder.
    needs_worker = bool(rt.events.settings.webhooks) or any(
        rt.settings.for_client(c.name).ladder for c in rt.settings.clients
    )
    service = rt.service
    own_spend = {
        name: _spend(service.velocity, abuse.money_counters(name, 1, now_ms), "client_spend")
        for name, abuse in service.client_abuse.items()
        if abuse.own_spend
    }
    return metrics.SharedState(
        budget=velocity.budget_used(rt.settings.call_budget, now_ms),
        spend=_spend(velocity, service.abuse.money_counters("", 1, now_ms), "spend"),
        client_spend=own_spend,
        suspended_since=_suspended_since(),
        breakers={name: until > now_ms for name, until in open_until.items()},
        client_budgets=client_budgets,
        workers=rt.events.workers_alive(now) if needs_worker else None,
        backlog=rt.events.backlog(now) if needs_worker else None,
    )


#: A money counter's period, by the first letter of its bucket (``all:d20429``).
PERIODS = {"h": "hour", "d": "day", "m": "month"}


def _spend(velocity: VelocityStore, items: list[Counter], kind: str) -> list[tuple[str, int, int]]:
    """(period, spent, limit) of the money counters of ``kind`` among ``items``."""
    chosen = [c for c in items if c.kind == kind]
    spent = velocity.spent(chosen) if chosen else []
    return [
        (PERIODS[c.who.rsplit(":", 1)[1][0]], used, c.limit)
        for c, used in zip(chosen, spent, strict=True)
    ]


@bp.get("/openapi.yaml")
def openapi() -> Response:
    """The contract of this server: the dev routes only in dev mode, a provider's webhooks only
    when this server takes them, ``brand`` only when a client may name one (elsewhere those
    answer 404, or 422)."""
    settings = runtime().settings
    text = resources.files("otpsvc").joinpath("openapi.yaml").read_text()
    served = served_contract(
        text,
        settings.dev_mode,
        webhooks_enabled(settings),
        brand=any(s.request_brand for s in (settings, *settings.client_settings.values())),
    )
    return Response(served, mimetype="application/yaml")


#: A path of the document.
_PATH = re.compile(r"^  (/[^:]*):\n", re.M)


def served_contract(
    text: str, dev_mode: bool, webhooks: Collection[str], *, brand: bool = True
) -> str:
    """``text`` (openapi.yaml) without what this server does not serve: a path is a block of
    its own lines, cut as it stands (the rest of the text is kept as written); so is the
    ``brand`` field of a start."""
    starts = [m.start() for m in _PATH.finditer(text)]
    end_of_paths = min(
        i for i in (text.find("\nwebhooks:\n"), text.find("\ncomponents:\n")) if i >= 0
    )
    kept, last = [], 0
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else end_of_paths + 1
        path = _PATH.match(text, start)
        assert path is not None
        if not _served(path.group(1), dev_mode, webhooks):
            kept.append(text[last:start])
            last = end
    kept.append(text[last:])
    served = "".join(kept)
    return served if brand else _without_property(served, "StartRequest", "brand")


def _without_property(text: str, schema: str, name: str) -> str:
    """``text`` without the property ``name`` of the component schema ``schema`` (its lines,
    up to the next line indented as its sibling or less)."""
    begin = text.index(f"\n    {schema}:\n")
    start = text.index(f"\n        {name}:\n", begin) + 1
    end = re.compile(r"^ {0,8}\S", re.M).search(text, start + 1)
    return text[:start] + text[end.start() if end else len(text) :]


def _served(path: str, dev_mode: bool, webhooks: Collection[str]) -> bool:
    parts = path.split("/")
    if parts[1] == "dev" or path.startswith("/webhooks/console/"):
        return dev_mode
    if parts[1] == "webhooks":
        return parts[2] in webhooks
    return True
