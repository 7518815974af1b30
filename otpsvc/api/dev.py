"""Dev mode only: the local call inbox, its page, fault injection and the console's webhooks.

Three blueprints, registered only by ``otpsvc dev`` (``OTPSVC_DEV_MODE``):

- ``api`` (``/dev/calls``, ``/dev/faults``): for an app's end-to-end tests, with its API key;
  each client sees only its own calls.
- ``page`` (``/dev``, ``/dev/stream``, ``/dev/page/*``): the page a developer opens. It takes no
  key: it is served to loopback clients only (the connecting address and the ``Host`` name
  both), refuses cross-site requests (``Origin``), and acts as the first configured client. No
  key is ever sent to the browser.
- ``console_hooks`` (``/webhooks/console/<token>/status``): where the console provider's
  delivery reports arrive, checked like a real provider's callback (a per-send token).
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Response, g, jsonify, request, stream_with_context
from marshmallow import Schema, fields, validate

from otpsvc.api import otp
from otpsvc.api.context import (
    authenticate,
    count_failed_authentication,
    current_client,
    limit_request,
    runtime,
)
from otpsvc.api.docs import html_page, own_asset
from otpsvc.api.schemas import VERIFICATION_ID, PhoneField, load
from otpsvc.api.webhooks import received
from otpsvc.dev.inbox import FAULTS, CallInbox, InboxCall
from otpsvc.errors import Forbidden, InvalidRequest, NotFound, Unauthorized
from otpsvc.phones import InvalidPhone, parse_phone

api = Blueprint("dev", __name__, url_prefix="/dev")
api.before_request(authenticate)
page = Blueprint("dev_page", __name__, url_prefix="/dev")
console_hooks = Blueprint("console_hooks", __name__, url_prefix="/webhooks/console")

ASSETS = {"base.css": "text/css", "dev.css": "text/css", "dev.js": "text/javascript"}
#: The longest ``wait`` of ``GET /dev/calls``, seconds.
MAX_WAIT = 30.0
#: How often a waiting request or an open page looks for a change, seconds.
POLL = 0.1
#: How long one page stream lives; the browser's EventSource reconnects by itself.
STREAM_SECONDS = 300.0
#: How often the page stream re-reads statuses (a check changes no inbox entry), seconds.
STATUS_EVERY = 0.5
#: Calls the page shows.
PAGE_CALLS = 30
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
#: The statuses a console report may carry (as a real provider's call can end).
CONSOLE_STATUSES = frozenset(
    {"initiated", "ringing", "in-progress", "completed", "no-answer", "busy", "failed"}
)


class FaultRequest(Schema):
    fault = fields.String(
        required=True,
        validate=validate.OneOf(FAULTS, error=f"must be one of {', '.join(FAULTS)}"),
    )
    phone = PhoneField()


class PressRequest(Schema):
    id = fields.String(
        required=True,
        validate=validate.Regexp(VERIFICATION_ID, error="must be a verification id"),
    )
    #: 1 or 9 on a keypress call; two digits or 9 on a match call.
    key = fields.String(
        required=True,
        validate=validate.Regexp(
            r"\A(?:[19]|[0-9]{2})\Z", error="must be 1, 9 or two digits (0-9)"
        ),
    )


FAULT_SCHEMA = FaultRequest()
PRESS_SCHEMA = PressRequest()


def _inbox() -> CallInbox:
    inbox = runtime().inbox
    if inbox is None:  # the blueprints are registered in dev mode only
        raise NotFound("dev mode is off")
    return inbox


# --- the API, with a key ---------------------------------------------------------------------


def _number(name: str) -> float | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise InvalidRequest({name: ["must be a number"]}) from None
    if not 0 <= value < float("inf"):
        raise InvalidRequest({name: ["must be 0 or more"]})
    return value


@api.get("/calls")
def calls() -> Response:
    """The client's calls, newest first. With ``phone``: the newest call to that number,
    waiting up to ``wait`` seconds for one; ``after`` (ms since the epoch) skips older calls."""
    limit_request()
    client = current_client()
    wait = _number("wait") or 0.0
    if wait > MAX_WAIT:
        raise InvalidRequest({"wait": [f"must be at most {MAX_WAIT:g} seconds"]})
    after = _number("after") or 0.0
    inbox = _inbox()
    raw_phone = request.args.get("phone")
    if raw_phone is not None and raw_phone.startswith(" "):
        raw_phone = "+" + raw_phone[1:]  # an unencoded "+" in a query string arrives as a space
    if raw_phone is None:
        if "wait" in request.args:
            raise InvalidRequest({"phone": ["required with wait"]})
        items = [c.public() for c in inbox.calls() if c.client == client and c.at >= after]
        return jsonify({"calls": items})
    try:
        e164 = parse_phone(raw_phone).e164
    except InvalidPhone as exc:
        raise InvalidRequest({"phone": [str(exc)]}) from exc
    deadline = time.monotonic() + wait
    while True:
        found = inbox.newest_for(client, e164, after)
        if found is not None or time.monotonic() >= deadline:
            return jsonify({"calls": [found.public()] if found else []})
        time.sleep(POLL)


def _set_fault() -> dict[str, Any]:
    data = load(FAULT_SCHEMA, otp._json_body())
    phone = data.get("phone")
    inbox = _inbox()
    inbox.set_fault(data["fault"], phone.e164 if phone else None)
    return inbox.faults()


@api.get("/faults")
def faults() -> Response:
    limit_request()
    return jsonify(_inbox().faults())


@api.post("/faults")
def add_fault() -> Response:
    limit_request()
    return jsonify(_set_fault())


@api.delete("/faults")
def clear_faults() -> Response:
    limit_request()
    _inbox().clear_faults()
    return Response(status=204)


# --- the page, loopback only, no key ---------------------------------------------------------


@page.before_request
def _loopback_only() -> None:
    """Served to this machine only, and never to another site's page (CSRF, DNS rebinding)."""
    try:
        local = ipaddress.ip_address(request.remote_addr or "").is_loopback
    except ValueError:
        local = False
    host = urlsplit(f"//{request.host}").hostname or ""
    if not local or host not in LOOPBACK_NAMES:
        raise Forbidden("the dev page is served to loopback clients only")
    origin = request.headers.get("Origin")
    if origin is not None and origin.rstrip("/") != request.host_url.rstrip("/"):
        raise Forbidden("cross-site requests to the dev page are refused")
    clients = runtime().settings.clients
    if not clients:
        raise Unauthorized("no API client is configured")
    g.client = clients[0].name


@page.get("")
def index() -> Response:
    return html_page("dev.html")


@page.get("/assets/<name>")
def asset(name: str) -> Response:
    return own_asset(name, ASSETS)


def _status_of(call: InboxCall) -> tuple[str, str | None]:
    """The verification's status and its delivery status, as ``GET /otp/{id}`` shows them."""
    try:
        verification = runtime().service.get(
            client=call.client, verification_id=call.verification_id
        )
    except NotFound:
        return "expired", None  # gone from Redis after its expiry
    return verification.status.value, verification.delivery_status


def _snapshot() -> dict[str, Any]:
    """What the page shows: the latest calls with their verifications' live status, and the
    faults in force."""
    inbox = _inbox()
    latest: dict[str, InboxCall] = {}
    shown = []
    for call in inbox.calls()[:PAGE_CALLS]:
        first = call.verification_id not in latest
        latest.setdefault(call.verification_id, call)
        view = call.public()
        view["current"] = first  # the newest send of its verification: its code works
        shown.append(view)
    statuses = {vid: _status_of(call) for vid, call in latest.items()}
    for view in shown:
        view["status"], view["delivery"] = statuses[view["verification_id"]]
    return {"client": current_client(), "calls": shown, "faults": inbox.faults()}


@page.get("/stream")
def stream() -> Response:
    """Server-sent events: a ``calls`` event with the whole snapshot whenever it changes."""
    app_runtime = runtime()

    def events() -> Iterator[str]:
        last = ""
        ends = time.monotonic() + STREAM_SECONDS
        version, checked = -1, 0.0
        yield "retry: 1000\n\n"
        while time.monotonic() < ends:
            now = time.monotonic()
            current = app_runtime.inbox.version() if app_runtime.inbox else 0
            if current != version or now - checked >= STATUS_EVERY:
                version, checked = current, now
                text = json.dumps(_snapshot(), separators=(",", ":"))
                if text != last:
                    last = text
                    yield f"event: calls\ndata: {text}\n\n"
                else:
                    yield ": keep-alive\n\n"
            time.sleep(POLL)

    response = Response(stream_with_context(events()), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Accel-Buffering"] = "no"
    return response


@page.get("/snapshot")
def snapshot() -> Response:
    return jsonify(_snapshot())


@page.post("/page/start")
def page_start() -> Response:
    return otp.start()


@page.post("/page/check")
def page_check() -> Response:
    return otp.check()


@page.post("/page/press")
def page_press() -> Response:
    """Keys pressed on a keypress or match call, as the person would: through the send's own
    token. The inbox keeps what was pressed on each call, to show it beside the digits asked."""
    data = load(PRESS_SCHEMA, otp._json_body())
    call = _inbox().find(data["id"])
    if call is None or call.mode not in ("keypress", "match") or not call.dtmf_token:
        raise NotFound("no keypress or match call with this id")
    service = runtime().service
    named = service.keyring.verify_callback_token(call.dtmf_token, "dtmf")
    if named is None:
        raise NotFound("no keypress or match call with this id")
    verification_id, gen, key_id = named
    result = service.keypress(
        key=data["key"],
        provider="console",
        verification_id=verification_id,
        gen=gen,
        key_id=key_id,
    )
    _inbox().pressed(verification_id, gen, data["key"], result)
    return jsonify({"result": result})


@page.post("/page/faults")
def page_fault() -> Response:
    return jsonify(_set_fault())


@page.delete("/page/faults")
def page_clear_faults() -> Response:
    _inbox().clear_faults()
    return Response(status=204)


# --- the console provider's delivery reports -------------------------------------------------


@console_hooks.post("/<token>/status")
def console_status(token: str) -> Response:
    rt = runtime()
    named = rt.service.keyring.verify_callback_token(token, "status")
    if named is None:
        count_failed_authentication()
        raise Unauthorized("unknown callback token")
    body = request.get_json(silent=True)
    status = body.get("status") if isinstance(body, dict) else None
    if status not in CONSOLE_STATUSES:
        raise InvalidRequest({"status": [f"must be one of {', '.join(sorted(CONSOLE_STATUSES))}"]})
    verification_id, gen, key_id = named
    result = rt.service.delivery_report(
        status=str(status),
        provider="console",
        verification_id=verification_id,
        gen=gen,
        key_id=key_id,
    )
    if rt.inbox is not None:
        rt.inbox.touch()
    return received(result)
