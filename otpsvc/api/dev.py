"""``/dev``: the local call inbox. Registered only in dev mode."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from otpsvc.api.context import authenticate, current_client, limit_request, runtime
from otpsvc.core.phones import parse_phone

bp = Blueprint("dev", __name__, url_prefix="/dev")
bp.before_request(authenticate)


@bp.get("/calls")
def calls() -> Response:
    """What the console provider would have said, newest first. Numbers are masked."""
    limit_request()
    inbox = runtime().inbox
    items = inbox.latest(current_client()) if inbox else []
    for item in items:
        item["phone"] = parse_phone(item["phone"]).masked
    return jsonify({"calls": items})
