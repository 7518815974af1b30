"""``/insights``: what verifications cost and how they convert (the funnel), for a client's
own verifications or, with an operator key (``OTPSVC_OPERATOR_KEYS``), for every client; and
the insights page that shows it."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from flask import Blueprint, Response, g, jsonify, request

from otpsvc.api.context import authenticate, current_client, limit_request, runtime
from otpsvc.api.docs import html_page, own_asset
from otpsvc.core.funnel import (
    BadGrouping,
    FunnelAsk,
    kind_for,
    parse_groups,
    parse_moment,
    read_funnel,
)
from otpsvc.errors import InvalidRequest
from otpsvc.store.rollups import DAY_MS

bp = Blueprint("insights", __name__)
#: The default range: the last 24 hours.
DEFAULT_RANGE_MS = DAY_MS
#: The page's own files and their types (the chart library is in the package, no CDN).
ASSETS = {
    "base.css": "text/css",
    "insights.js": "text/javascript",
    "insights.css": "text/css",
    "uplot.iife.min.js": "text/javascript",
    "uplot.min.css": "text/css",
}


def _reader() -> str | None:
    """Who reads: None for an operator (every client), else the client whose key it is (and
    its request limit counts the read)."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    operator = runtime().operator_for_key(token.strip()) if scheme.lower() == "bearer" else None
    if operator is not None:
        g.client = f"operator:{operator}"
        return None
    authenticate()
    limit_request()
    return current_client()


def funnel_ask(reader: str | None, now_ms: int) -> FunnelAsk:
    """The request's range and grouping, checked: 422 naming the parameter."""
    errors: dict[str, list[str]] = {}
    moments: dict[str, int] = {}
    for name in ("from", "to"):
        text = request.args.get(name)
        if text is not None:
            try:
                moments[name] = parse_moment(text, name)
            except ValueError as exc:
                errors[name] = [str(exc).partition(": ")[2]]
    groups = parse_groups(request.args.get("group_by", ""))
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
    return FunnelAsk(start, end, groups, reader)


@bp.get("/insights/funnel")
def get_funnel() -> Response:
    """The funnel of ``from``..``to`` grouped by ``group_by`` (see :mod:`otpsvc.core.funnel`)."""
    reader = _reader()
    rt = runtime()
    now_ms = int(time.time() * 1000)
    currency = rt.settings.currency if rt.settings.prices else None
    answer = jsonify(read_funnel(rt.rollups, funnel_ask(reader, now_ms), now_ms, currency))
    answer.headers["Cache-Control"] = "no-store"
    return answer


@bp.get("/insights/suspensions")
def get_suspensions() -> Response:
    """The conversion rule's suspensions in force: an operator's all, a client's those that
    apply to its sends (no other client named)."""
    reader = _reader()
    conversion = runtime().service.conversion
    now_ms = int(time.time() * 1000)
    found = conversion.suspensions(now_ms) if conversion is not None else []
    if reader is not None:
        found = [
            s for s in found if s.client == reader or (s.client is None and reader not in s.exempt)
        ]
    shown = []
    for s in found:
        item = s.as_dict(with_clients=reader is None)
        item["since"] = _moment(item.pop("since_ms"))
        item["until"] = _moment(item.pop("until_ms"))
        shown.append(item)
    answer = jsonify({"suspensions": shown})
    answer.headers["Cache-Control"] = "no-store"
    return answer


def _moment(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


@bp.get("/insights")
def page() -> Response:
    """The insights page: the operator enters a key in the page (kept in the tab's memory,
    never in a URL: the browser may not send its form), and the page asks
    ``/insights/funnel`` with it."""
    return html_page("insights.html", form_action="'none'")


@bp.get("/insights/static/<name>")
def static(name: str) -> Response:
    return own_asset(name, ASSETS)
