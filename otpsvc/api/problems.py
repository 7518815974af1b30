"""One set of error handlers for the whole app: every error is an RFC 9457 problem document."""

from __future__ import annotations

import logging
import re

import limits.errors
from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from otpsvc.errors import OtpError, StoreUnavailable
from otpsvc.requestcontext import current_request_id
from otpsvc.store.connection import STORE_ERRORS

log = logging.getLogger("otpsvc.api")

PROBLEM_JSON = "application/problem+json"


def problem(
    status: int,
    code: str,
    title: str,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    extensions: dict[str, object] | None = None,
) -> Response:
    body = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        **(extensions or {}),
    }
    request_id = current_request_id()
    if request_id:
        body["request_id"] = request_id
    response = jsonify(body)
    response.status_code = status
    response.mimetype = PROBLEM_JSON
    response.headers.update(headers or {})
    return response


def render(error: OtpError) -> Response:
    return problem(
        error.status,
        error.code,
        error.title,
        error.detail,
        headers=error.headers(),
        extensions=error.extensions(),
    )


#: Codes the documentation gives that differ from werkzeug's name of the status.
HTTP_CODES = {413: "payload_too_large"}


def _http_code(exc: HTTPException) -> str:
    if exc.code in HTTP_CODES:
        return HTTP_CODES[exc.code]
    return re.sub(r"[^a-z0-9]+", "_", (exc.name or "error").lower()).strip("_")


def _on_http(exc: HTTPException) -> Response:
    status = exc.code or 500
    headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
    return problem(status, _http_code(exc), exc.name, exc.description or exc.name, headers=headers)


def _on_store_down(exc: Exception) -> Response:
    log.warning("redis unavailable: %s", type(exc).__name__)
    return render(StoreUnavailable("the verification store did not answer"))


def _on_unexpected(exc: Exception) -> Response:
    log.exception("unhandled error")
    return problem(500, "internal_error", "Internal Server Error", "an unexpected error occurred")


def register(app: Flask) -> None:
    app.register_error_handler(OtpError, render)
    app.register_error_handler(HTTPException, _on_http)
    app.register_error_handler(limits.errors.StorageError, _on_store_down)
    for error in STORE_ERRORS:
        app.register_error_handler(error, _on_store_down)
    app.register_error_handler(Exception, _on_unexpected)
