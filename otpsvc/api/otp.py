"""``/otp``: start (or resend), check, read and cancel verifications."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import BadRequest, UnsupportedMediaType

from otpsvc.api.context import (
    Runtime,
    authenticate,
    client_ip,
    current_client,
    limit_request,
    request_gate,
    runtime,
)
from otpsvc.api.limits import Meet
from otpsvc.api.problems import PROBLEM_JSON, render
from otpsvc.api.proxies import VIA_TRUSTED_PROXY
from otpsvc.api.schemas import (
    VERIFICATION_ID,
    CheckRequest,
    StartRequest,
    check_view,
    load,
)
from otpsvc.core.addresses import address_bucket
from otpsvc.core.draft import StartAsk
from otpsvc.core.views import verification_view
from otpsvc.errors import (
    IdempotencyKeyReused,
    InvalidRequest,
    NotFound,
    OtpError,
    RateLimited,
    RequestInProgress,
)
from otpsvc.store.gate import Gate
from otpsvc.store.idempotency import fingerprint

bp = Blueprint("otp", __name__, url_prefix="/otp")
#: Built once: a marshmallow schema costs more to build than to load a body with.
START_SCHEMA = StartRequest()
CHECK_SCHEMA = CheckRequest()
bp.before_request(authenticate)

#: draft-ietf-httpapi-idempotency-key-header: 1-255 printable ASCII characters; the draft's
#: structured-field form (a quoted string) is accepted too.
IDEMPOTENCY_KEY = re.compile(r"[\x20-\x7e]{1,255}", re.ASCII)
IDEMPOTENCY_HEADER = "Idempotency-Key"
#: Headers replayed with a kept answer.
KEPT_HEADERS = frozenset({"Retry-After"})


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


#: A gateway's end-user id: what ``end_user.user_id`` may hold.
END_USER_ID = re.compile(r"[\x20-\x7e]{1,128}", re.ASCII)


@dataclass(frozen=True)
class Person:
    """The end user a request is for: the address per-person limits count, and their id."""

    address: str
    user_id: str | None
    #: Named by a gateway (``caller = "gateway"``), not vouched for by a backend.
    via_gateway: bool = False

    @property
    def scope(self) -> str | None:
        """Who a gateway's end user is, by id or else by address: what their Idempotency-Keys
        and open verifications belong to. None for a backend's: its keys and its users' open
        verifications are the client's (the backend makes the keys and speaks for all)."""
        if not self.via_gateway:
            return None
        return f"user:{self.user_id}" if self.user_id is not None else f"ip:{self.address}"

    def idempotency_key(self, key: str) -> str:
        """An ``Idempotency-Key`` in its scope: behind a gateway every person sends keys under
        the one client, so two people never share a record."""
        return key if self.scope is None else f"{self.scope}\0{key}"


def _person(data: dict[str, Any]) -> Person:
    """Who the request is for, by the client's kind of caller.

    A backend vouches for its end user: ``end_user.ip`` and ``end_user.user_id`` are its word
    (without ``end_user.ip``, the connecting address). A gateway passes the end user's own
    request through, so nothing in the body names anyone: ``end_user`` is refused, the address
    is the connection's through the trusted proxies, and the id is the header the gateway sets,
    believed only from a trusted proxy.
    """
    settings = runtime().settings.for_client(current_client())
    if settings.caller == "gateway":
        if "end_user" in data:
            raise InvalidRequest(
                {
                    "end_user": [
                        "not accepted from a gateway client: the end user is the forwarded "
                        f"address and the {settings.end_user_id_header} header the gateway sets"
                    ]
                }
            )
        return Person(client_ip(), _gateway_user_id(settings.end_user_id_header), via_gateway=True)
    end_user = data.get("end_user") or {}
    ip = end_user.get("ip")
    address = client_ip() if ip is None else address_bucket(ip, runtime().settings.ipv6_prefix)
    return Person(address, end_user.get("user_id"))


def _gateway_user_id(header: str) -> str | None:
    """The end-user id a trusted gateway set; from anyone else the header is ignored, as a
    forged ``X-Forwarded-For`` is."""
    value = request.headers.get(header)
    if value is None or not request.environ.get(VIA_TRUSTED_PROXY):
        return None
    if not END_USER_ID.fullmatch(value):
        raise InvalidRequest(
            {header: ["must be 1 to 128 printable ASCII characters"]}, f"invalid header: {header}"
        )
    return value


def _per_person(scope: str, address: str) -> Meet:
    """A limit per end-user address, counted per API client: the address is the client's word
    (``end_user.ip``) or its own backend's, and one client's traffic must not lock the people
    behind that address out of another client's app (a carrier NAT holds thousands)."""
    return Meet(scope, f"{current_client()}\0{address}")


def _idempotency_key() -> str | None:
    raw = request.headers.get(IDEMPOTENCY_HEADER)
    if raw is None:
        return None
    key = raw[1:-1] if len(raw) >= 2 and raw[0] == raw[-1] == '"' else raw
    if not IDEMPOTENCY_KEY.fullmatch(key):
        raise InvalidRequest(
            {IDEMPOTENCY_HEADER: ["must be 1 to 255 printable ASCII characters"]},
            f"invalid header: {IDEMPOTENCY_HEADER}",
        )
    return key


@bp.post("/start")
def start() -> Response:
    body = _json_body()
    key = _idempotency_key()
    data = load(START_SCHEMA, body)
    rt = runtime()
    person = _person(data)
    if key is None:
        # The request limits go in the round trip of the call limits (see VerificationService).
        return _start(rt, data, person, request_gate(_per_person("start_ip", person.address)))
    try:
        limit_request(_per_person("start_ip", person.address))
    except RateLimited:
        rt.service.count_refused(data["phone"], data["mode"], current_client())
        raise
    claim_key, claim = rt.idempotency.claim(
        current_client(), person.idempotency_key(key), fingerprint(body)
    )
    if claim.outcome == "reused":
        raise IdempotencyKeyReused(
            f"this {IDEMPOTENCY_HEADER} was used with another request body; use a new key"
        )
    if claim.outcome == "running":
        # A start takes well under a second unless a provider is slow: poll again soon.
        raise RequestInProgress(
            1, f"the first request with this {IDEMPOTENCY_HEADER} is still running"
        )
    if claim.outcome == "done":
        replay = Response(
            _opened(rt, claim.body),
            status=claim.status,
            mimetype="application/json" if claim.status < 400 else PROBLEM_JSON,
        )
        replay.headers.update(claim.headers)
        replay.headers["Idempotent-Replayed"] = "true"
        return replay
    try:
        response = _start(rt, data, person)
    except OtpError as exc:
        response = render(exc)
    except BaseException:
        rt.idempotency.release(claim_key, claim)
        raise
    # Only an answer that changed something is kept: a verification opened or resent (2xx), or
    # one whose call no provider took (502, so a retry does not call again). A refusal changed
    # nothing, and a retry may well be answered otherwise; keeping it would let one client fill
    # Redis with a record per refused request.
    if response.status_code >= 300 and response.status_code != 502:
        rt.idempotency.release(claim_key, claim)
    else:
        kept = {k: v for k, v in response.headers.items() if k in KEPT_HEADERS}
        rt.idempotency.finish(claim_key, claim, response.status_code, _sealed(rt, response), kept)
    return response


def _start(rt: Runtime, data: dict[str, Any], person: Person, gate: Gate | None = None) -> Response:
    ask = StartAsk(
        client=current_client(),
        phone=data["phone"],
        code_length=data.get("code_length"),
        locale=data.get("locale"),
        client_ref=data.get("client_ref"),
        mode=data["mode"],
        end_user_ip=person.address,
        end_user_id=person.user_id,
        brand=data.get("brand"),
        end_user_scope=person.scope,
    )
    outcome = rt.service.start(ask, gate)
    view = verification_view(outcome.verification, _currency())
    if outcome.match is not None:
        view["match"] = outcome.match
    response = jsonify(view)
    response.status_code = 201 if outcome.created else 200
    return response


def _sealed(rt: Runtime, response: Response) -> str:
    """The answer to keep for an idempotent replay: a match start's digits sealed (Redis holds
    only their keyed hash in the clear)."""
    text = response.get_data(as_text=True)
    if response.status_code >= 300 or '"match"' not in text:
        return text
    view = json.loads(text)
    if "match" not in view:  # "match" was the mode
        return text
    view["match"] = rt.service.keyring.seal_text(view["id"], "match", view["match"])
    return str(current_app.json.dumps(view)) + "\n"


def _opened(rt: Runtime, body: str) -> str:
    """A kept answer as it was sent: a match start's digits unsealed (left out when the secret
    they were sealed with is gone)."""
    if '"match"' not in body:
        return body
    view = json.loads(body)
    if not isinstance(view, dict) or not isinstance(view.get("match"), str):
        return body
    digits = rt.service.keyring.open_text(view["id"], "match", view["match"])
    if digits is None:
        del view["match"]
    else:
        view["match"] = digits
    return str(current_app.json.dumps(view)) + "\n"


@bp.post("/check")
def check() -> Response:
    data = load(CHECK_SCHEMA, _json_body())
    outcome = runtime().service.check(
        client=current_client(),
        verification_id=data["id"],
        code=data["code"],
        gate=request_gate(_per_person("check_ip", _person(data).address)),
    )
    return jsonify(check_view(outcome))


@bp.get("/<string(length=36):verification_id>")
def read(verification_id: str) -> Response:
    limit_request()
    verification = runtime().service.get(
        client=current_client(), verification_id=_checked_id(verification_id)
    )
    return jsonify(verification_view(verification, _currency()))


@bp.post("/<string(length=36):verification_id>/cancel")
def cancel(verification_id: str) -> Response:
    limit_request()
    verification = runtime().service.cancel(
        client=current_client(), verification_id=_checked_id(verification_id)
    )
    return jsonify(verification_view(verification, _currency()))


def _currency() -> str | None:
    """With a price file, its currency: a verification then shows what its sends cost."""
    settings = runtime().settings
    return settings.currency if settings.prices else None
