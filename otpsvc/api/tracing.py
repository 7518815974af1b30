"""Request ids and W3C trace context for every request.

- ``X-Request-Id``: taken from the request when it is 1-64 characters of ``[A-Za-z0-9._-]``,
  otherwise generated; echoed on the response, in every log and audit line of the request and in
  problem bodies as ``request_id``.
- ``traceparent`` (W3C Trace Context): a valid one is continued, anything else starts a new
  trace; provider requests carry this request's trace id with a span id of their own, so a
  provider's logs join the caller's trace.
"""

from __future__ import annotations

import secrets
import time
import uuid

from flask import Flask, Response, g, request

from otpsvc import metrics, telemetry
from otpsvc.requestcontext import (
    REQUEST_ID,
    TraceContext,
    parse_traceparent,
    request_id_var,
    trace_var,
)


def _begin() -> None:
    g.started = time.perf_counter()
    presented = request.headers.get("X-Request-Id", "")
    request_id = presented if REQUEST_ID.fullmatch(presented) else uuid.uuid4().hex
    g.request_id = request_id
    g.request_id_token = request_id_var.set(request_id)
    context = parse_traceparent(request.headers.get("traceparent"))
    if context is None:
        context = TraceContext(secrets.token_hex(16), secrets.token_hex(8), "00")
    g.trace_token = trace_var.set(context)
    if telemetry.recording():  # the span's name and headers are built only when one is made
        g.http_span = telemetry.begin_server_span(
            f"HTTP {request.method} {request.url_rule.rule if request.url_rule else request.path}",
            dict(request.headers),
        )


def _finish(response: Response) -> Response:
    telemetry.set_status(g.get("http_span"), response.status_code)
    started = g.get("started")
    if started is not None:
        endpoint = request.endpoint or "unmatched"
        client = metrics.client_label(g.get("client"))
        metrics.HTTP_SECONDS.labels(client, endpoint, str(response.status_code)).observe(
            time.perf_counter() - started
        )
    request_id = g.get("request_id")
    if request_id:
        response.headers["X-Request-Id"] = request_id
    return response


def _reset(_: BaseException | None) -> None:
    telemetry.end_server_span(g.pop("http_span", None))
    for name, var in (("request_id_token", request_id_var), ("trace_token", trace_var)):
        token = g.pop(name, None)
        if token is not None:
            var.reset(token)


def register(app: Flask) -> None:
    app.before_request(_begin)
    app.after_request(_finish)
    app.teardown_request(_reset)
