"""``/otp``: start (or resend), check, read and cancel verifications."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request
from werkzeug.exceptions import BadRequest, UnsupportedMediaType

from otpsvc.api.context import authenticate, client_ip, current_client, runtime
from otpsvc.api.schemas import (
    VERIFICATION_ID,
    CheckRequest,
    StartRequest,
    check_view,
    load,
    verification_view,
)
from otpsvc.errors import NotFound

bp = Blueprint("otp", __name__, url_prefix="/otp")
bp.before_request(authenticate)


def _json_body() -> object:
    if not request.is_json:
        raise UnsupportedMediaType("send the body as application/json")
    try:
        return request.get_json()
    except BadRequest as exc:
        raise BadRequest("the body is not valid JSON") from exc


def _checked_id(verification_id: str) -> str:
    if not VERIFICATION_ID.match(verification_id):
        raise NotFound("no verification with this id")
    return verification_id


@bp.post("/start")
def start() -> tuple[Response, int]:
    data = load(StartRequest(), _json_body())
    outcome = runtime().service.start(
        client=current_client(),
        phone=data["phone"],
        code_length=data.get("code_length"),
        locale=data.get("locale"),
        client_ref=data.get("client_ref"),
        mode=data["mode"],
        client_ip=client_ip(),
    )
    return jsonify(verification_view(outcome.verification)), 201 if outcome.created else 200


@bp.post("/check")
def check() -> Response:
    data = load(CheckRequest(), _json_body())
    outcome = runtime().service.check(
        client=current_client(), verification_id=data["id"], code=data["code"]
    )
    return jsonify(check_view(outcome))


@bp.get("/<verification_id>")
def read(verification_id: str) -> Response:
    verification = runtime().service.get(
        client=current_client(), verification_id=_checked_id(verification_id)
    )
    return jsonify(verification_view(verification))


@bp.post("/<verification_id>/cancel")
def cancel(verification_id: str) -> Response:
    verification = runtime().service.cancel(
        client=current_client(), verification_id=_checked_id(verification_id)
    )
    return jsonify(verification_view(verification))
