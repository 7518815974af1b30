"""``/insights``: what verifications cost and how they convert (the funnel), for a client's
own verifications or, with an operator key (``OTPSVC_OPERATOR_KEYS``), for every client; and
the insights page that shows it."""

from __future__ import annotations

import time
from importlib import resources

from flask import Blueprint, Response, g, jsonify, request

from otpsvc.api.context import count_failed_authentication, limit_request, runtime
from otpsvc.core.funnel import BadGrouping, FunnelAsk, funnel, kind_for, parse_moment
from otpsvc.errors import InvalidRequest, NotFound, Unauthorized
from otpsvc.store.rollups import DAY_MS

bp = Blueprint("insights", __name__)
#: The default range: the last 24 hours.
DEFAULT_RANGE_MS = DAY_MS
#: The page's own files (the chart library is in the package, no CDN).
STATIC = ("insights.js", "insights.css", "uplot.iife.min.js", "uplot.min.css")


def _reader() -> str | None:
    """Who reads: None for an operator (every client), else the client whose key it is."""
    rt = runtime()
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() == "bearer" and token:
        operator = rt.operator_for_key(token)
        if operator is not None:
            g.client = f"operator:{operator}"
            return None
        client = rt.client_for_key(token)
        if client is not None:
            g.client = client
            limit_request()
            return client
    count_failed_authentication()
    raise Unauthorized("send an API key or an operator key as 'Authorization: Bearer <key>'")


def funnel_ask(reader: str | None, now_ms: int) -> FunnelAsk:
    """The request's range and grouping, checked: 422 naming the parameter."""
    errors: dict[str, list[str]] = {}
    moments: dict[str, int] = {}
    for name in ("from", "to"):
        text = request.args.get(name)
        if text:
            try:
                moments[name] = parse_moment(text, name)
            except ValueError as exc:
                errors[name] = [str(exc).partition(": ")[2]]
    groups = tuple(g for g in request.args.get("group_by", "").replace(" ", "").split(",") if g)
    try:
        kind_for(groups)
    except BadGrouping as exc:
        errors["group_by"] = [str(exc)]
    end = moments.get("to", now_ms)
    start = moments.get("from", end - DEFAULT_RANGE_MS)
    if not errors and start >= end:
        errors["from"] = ["must be before to"]
    if errors:
        raise InvalidRequest(errors)
    kept = runtime().settings.insights_days * DAY_MS
    return FunnelAsk(max(start, now_ms - kept), end, groups, reader)


@bp.get("/insights/funnel")
def get_funnel() -> Response:
    """The funnel of ``from``..``to`` grouped by ``group_by`` (see :mod:`otpsvc.core.funnel`)."""
    reader = _reader()
    rt = runtime()
    now_ms = int(time.time() * 1000)
    ask = funnel_ask(reader, now_ms)
    span, start, end = rt.rollups.span(ask.start_ms, ask.end_ms, now_ms)
    ask = FunnelAsk(start, end, ask.group_by, ask.client)
    cells = rt.rollups.read(kind_for(ask.group_by), span, start, end)
    currency = rt.settings.currency if rt.settings.prices else None
    answer = jsonify(funnel(ask, cells, currency))
    answer.headers["Cache-Control"] = "no-store"
    return answer


@bp.get("/insights")
def page() -> Response:
    """The insights page: the operator enters a key in the page (kept in the tab's memory,
    never in a URL), and the page asks ``/insights/funnel`` with it."""
    return _static("insights.html", "text/html; charset=utf-8")


@bp.get("/insights/static/<name>")
def static(name: str) -> Response:
    if name not in STATIC:
        raise NotFound("no such file of the insights page")
    kind = "text/css" if name.endswith(".css") else "text/javascript"
    return _static(name, f"{kind}; charset=utf-8")


def _static(name: str, kind: str) -> Response:
    body = resources.files("otpsvc.api").joinpath("pages", name).read_bytes()
    answer = Response(body, mimetype=kind.split(";")[0], content_type=kind)
    answer.headers["Cache-Control"] = "no-cache"
    answer.headers["Content-Security-Policy"] = (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    answer.headers["X-Content-Type-Options"] = "nosniff"
    answer.headers["Referrer-Policy"] = "no-referrer"
    return answer
