"""``/webhooks``: what providers report about calls. Verified, idempotent, never approving a code.

- ``POST /webhooks/sevenio``: seven.io hooks (``voice_status``, ``voice_dtmf``), created with
  ``request_method: JSON``. ``X-Signature`` is HMAC-SHA256 with the signing key over timestamp,
  nonce, method, full URL and MD5 of the body; older than ``OTPSVC_SEVENIO_WEBHOOK_MAX_AGE``
  (300 s) or a reused nonce is refused.
- ``GET|POST /webhooks/cequens/<token>/status`` and ``.../dtmf``: CEQUENS callbacks; the token in
  the URL is made with the server secret for one endpoint of one send of one verification.
- ``POST /webhooks/termii``: Termii events with ``X-Termii-Signature`` (HMAC-SHA512 of the body);
  enabled only when ``OTPSVC_TERMII_WEBHOOK_SECRET`` is set.

A bad signature is 401 and changes nothing. A report about an unknown or finished verification is
accepted (200) so the provider stops retrying, and changes nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any

from flask import Blueprint, Response, jsonify, request

from otpsvc.api.context import count_failed_authentication, runtime
from otpsvc.config import Settings
from otpsvc.errors import NotFound, Unauthorized

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")

TIMESTAMP = re.compile(r"[0-9]{1,12}", re.ASCII)

# Status words of each provider, mapped to otpsvc's delivery statuses.
SEVENIO_STATUSES = {
    "initiated": "initiated",
    "ringing": "ringing",
    "in-progress": "in-progress",
    "completed": "completed",
    "no-answer": "no-answer",
    "busy": "busy",
    "failed": "failed",
}
CEQUENS_STATUSES = {
    **SEVENIO_STATUSES,
    "queued": "initiated",
    "answered": "in-progress",
    "noanswer": "no-answer",
    "no_answer": "no-answer",
}
TERMII_STATUSES = {
    "message sent": "initiated",
    "delivered": "completed",
    "message failed": "failed",
    "dnd active on phone number": "failed",
}
# Unconfirmed CEQUENS field names, tried in order (see otpsvc.voice.cequens).
CEQUENS_STATUS_FIELDS = ("status", "callStatus")
CEQUENS_DTMF_FIELDS = ("dtmf", "digits", "input")


#: The setting without which a provider's webhook does not exist (the others' exist with the
#: provider: each send's callback URL carries its own token).
WEBHOOK_SECRETS = {"sevenio": "signing_key", "termii": "webhook_secret"}


def webhooks_enabled(settings: Settings) -> set[str]:
    """The providers whose webhooks this server takes."""
    enabled = set()
    for name in settings.all_providers:
        field = WEBHOOK_SECRETS.get(name)
        own = settings.provider_settings.get(name)
        if field is None or (own is not None and getattr(own, field, None)):
            enabled.add(name)
    return enabled


def _webhook_secret(provider: str, field: str) -> str:
    """The provider's webhook secret; without one (or the provider) its webhook does not exist."""
    settings = runtime().settings.provider_settings.get(provider)
    secret = getattr(settings, field, None) if settings is not None else None
    if not secret:
        raise NotFound(f"{provider} webhooks are not enabled")
    return str(secret)


def _same(expected: str, presented: str) -> bool:
    """Constant-time comparison that also takes any non-ASCII a stranger may send."""
    return hmac.compare_digest(expected.encode(), presented.encode("utf-8", "surrogateescape"))


def received(result: str) -> Response:
    """The answer to a webhook or callback: received, and what it changed."""
    return jsonify({"received": True, "result": result})


def _public_url() -> str:
    """The URL the provider called: the configured public base, else what this request says."""
    base = runtime().settings.public_url
    if base:
        query = request.query_string.decode()
        return base + request.path + (f"?{query}" if query else "")
    return request.url


def sevenio_signature(
    key: str, timestamp: str, nonce: str, method: str, url: str, body: bytes
) -> str:
    message = "\n".join(
        [timestamp, nonce, method, url, hashlib.md5(body, usedforsecurity=False).hexdigest()]
    )
    return hmac.new(key.encode(), message.encode(), hashlib.sha256).hexdigest()


@bp.post("/sevenio")
def sevenio() -> Response:
    rt = runtime()
    signing_key = _webhook_secret("sevenio", WEBHOOK_SECRETS["sevenio"])
    body = request.get_data()
    timestamp = request.headers.get("X-Timestamp", "")
    nonce = request.headers.get("X-Nonce", "")
    expected = sevenio_signature(signing_key, timestamp, nonce, request.method, _public_url(), body)
    if not _same(expected, request.headers.get("X-Signature", "")):
        raise Unauthorized("bad signature")
    # ASCII digits only: str.isdigit() also takes "²", which int() then refuses (a 500).
    max_age = rt.settings.provider_settings["sevenio"].webhook_max_age
    if not TIMESTAMP.fullmatch(timestamp) or abs(rt.service.clock() - int(timestamp)) > max_age:
        raise Unauthorized("stale or missing timestamp")
    # A nonce is remembered at least twice as long as a hook may be old.
    if not nonce or not rt.store.first_use_of_nonce("sevenio", nonce, 2 * max_age + 60):
        raise Unauthorized("nonce already used")

    payload: Any = request.get_json(silent=True)
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, dict):
        return received("ignored")
    event = payload.get("webhook_event")
    message_id = str(data.get("id", "")) or None
    if message_id is None:
        # A report must name its call: by the verification alone (foreign_id) it could be
        # about an earlier send, and move a ladder on past the code the person was just given.
        return received("ignored")
    verification_id = _known_id(data.get("foreign_id"))
    if event == "voice_dtmf":
        result = rt.service.keypress(
            key=str(data.get("dtmf_digit", "")),
            verification_id=verification_id,
            provider="sevenio",
            message_id=message_id,
        )
        return received(result)
    if event == "voice_status":
        status = SEVENIO_STATUSES.get(str(data.get("status", "")).lower())
        if status is None:
            return received("ignored")
        return received(
            rt.service.delivery_report(
                status=status,
                verification_id=verification_id,
                provider="sevenio",
                message_id=message_id,
            )
        )
    return received("ignored")


def _known_id(value: object) -> str | None:
    """A verification id named in a payload, if it looks like one (it is still looked up)."""
    text = str(value) if value else ""
    return text if len(text) == 36 and all(c in "0123456789abcdef" for c in text) else None


def _cequens_field(names: tuple[str, ...]) -> str:
    payload: Any = request.get_json(silent=True) if request.is_json else None
    for name in names:
        value = request.args.get(name) or request.form.get(name)
        if value is None and isinstance(payload, dict):
            value = payload.get(name)
        if value is not None:
            return str(value)
    return ""


def _cequens_send(token: str, kind: str) -> tuple[str, int, str]:
    """The verification and send a callback token was made for, on this endpoint only, and the
    id of the secret that made it."""
    named = runtime().service.keyring.verify_callback_token(token, kind)
    if named is None:
        # The token is the endpoint's only credential: a wrong one is a guess, limited per
        # address like a wrong API key.
        count_failed_authentication()
        raise Unauthorized("unknown callback token")
    return named


@bp.route("/cequens/<token>/status", methods=["GET", "POST"])
def cequens_status(token: str) -> Response:
    verification_id, gen, key_id = _cequens_send(token, "status")
    status = CEQUENS_STATUSES.get(_cequens_field(CEQUENS_STATUS_FIELDS).lower())
    if status is None:
        return received("ignored")
    return received(
        runtime().service.delivery_report(
            status=status,
            provider="cequens",
            verification_id=verification_id,
            gen=gen,
            key_id=key_id,
        )
    )


@bp.route("/cequens/<token>/dtmf", methods=["GET", "POST"])
def cequens_dtmf(token: str) -> Response:
    verification_id, gen, key_id = _cequens_send(token, "dtmf")
    key = _cequens_field(CEQUENS_DTMF_FIELDS)[:1]
    return received(
        runtime().service.keypress(
            key=key, provider="cequens", verification_id=verification_id, gen=gen, key_id=key_id
        )
    )


@bp.post("/termii")
def termii() -> Response:
    rt = runtime()
    secret = _webhook_secret("termii", WEBHOOK_SECRETS["termii"])
    expected = hmac.new(secret.encode(), request.get_data(), hashlib.sha512).hexdigest()
    if not _same(expected, request.headers.get("X-Termii-Signature", "")):
        raise Unauthorized("bad signature")
    payload: Any = request.get_json(silent=True)
    if not isinstance(payload, dict) or not payload.get("message_id"):
        return received("ignored")
    # "Delivered", "Message Sent", ... and, in older payloads,
    # "DELIVERED | Message delivered to handset": the words before "|", in any case.
    word = str(payload.get("status", "")).split("|", 1)[0].strip().lower()
    status = TERMII_STATUSES.get(word)
    if status is None:
        return received("ignored")
    return received(
        rt.service.delivery_report(
            status=status, provider="termii", message_id=str(payload["message_id"])
        )
    )
