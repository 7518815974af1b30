"""CEQUENS text-to-speech "call with user input".

Sign in with the service user name and API key to get a bearer token (a JWT), keep it until it
expires (one per process, shared by all threads), and sign in again once when a call answers 401.
The call carries the spoken text, the voice, repeats, the answer timeout, and this service's
status and DTMF callback URLs, each holding an unguessable per-verification token.

Sources of the field block below:
- confirmed by CEQUENS's public voice documentation: ``sayText``, ``dtmfCallbackEndpoint``, the
  ``metaData`` example as a ``{"key": ..., "value": ...}`` object, ``ringingDuration``, a
  recipient written as digits without ``+``, and the voices (Zeina and Hala for Arabic; Kendra,
  Joanna and Matthew for English);
- confirmed by public CEQUENS client code: ``POST {base}/auth/v1/tokens/`` (with the trailing
  slash) taking ``userName`` and ``apiKey`` and answering ``data.access_token``;
- not confirmed: the other call field names (``UNCONFIRMED_FIELDS``), the call path and the
  reply shape. Confirm them with CEQUENS before going live; an operator renames the fields with
  ``OTPSVC_CEQUENS_FIELDS`` (``recipient=to,voice=voice``) without a release.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from marshmallow import Schema, ValidationError, fields, post_load, validate

from otpsvc.voice.base import (
    CallRequest,
    CallResult,
    HttpProvider,
    MappingSetting,
    ProviderError,
    Speech,
    Timeouts,
    base_url_field,
    json_body,
    secret_field,
)
from otpsvc.voice.scripts import LANGUAGE_TAGS, language_of
from otpsvc.voice.templates import render_text

SIGNIN_PATH = "/auth/v1/tokens/"
CALL_PATH = "/voice/v1/calls"
SIGNIN_FIELDS = ("userName", "apiKey")
TOKEN_FIELD = "access_token"  # noqa: S105 - a JSON key, not a secret
#: Call fields named in CEQUENS's public documentation.
CONFIRMED_FIELDS = {
    "text": "sayText",
    "answer_timeout": "ringingDuration",
    "dtmf_callback": "dtmfCallbackEndpoint",
    "metadata": "metaData",
}
#: Call fields no public source names: defaults here, renamed by ``OTPSVC_CEQUENS_FIELDS``.
UNCONFIRMED_FIELDS = {
    "recipient": "recipientNumber",
    "voice": "voiceName",
    "neural": "neuralTts",
    "repeats": "sayTextRepeats",
    "collect_dtmf": "collectDtmf",
    "status_callback": "statusCallbackEndpoint",
}
CALL_FIELDS = {**CONFIRMED_FIELDS, **UNCONFIRMED_FIELDS}
FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
#: CEQUENS's voices by script locale: the Arabic and English ones its documentation lists.
DEFAULT_VOICES = {"ar": "Zeina", "en": "Joanna"}
VOICE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,39}")
CALL_ID_FIELDS = ("callId", "id", "requestId")
#: When a token says nothing of its expiry, it is kept this long.
DEFAULT_TOKEN_SECONDS = 600
#: Tokens are renewed this long before they expire, so none expires in flight.
TOKEN_MARGIN_SECONDS = 30


@dataclass(frozen=True)
class CequensSettings:
    base_url: str
    username: str
    api_key: str
    #: The voice for each script locale that may be sent to CEQUENS.
    voices: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_VOICES))
    #: The call's field names, the unconfirmed ones as the operator set them.
    call_fields: dict[str, str] = field(default_factory=lambda: dict(CALL_FIELDS))

    def __repr__(self) -> str:
        return f"CequensSettings(base_url={self.base_url!r}, voices={self.voices!r})"


class CequensSettingsSchema(Schema):
    base_url = base_url_field("OTPSVC_CEQUENS_BASE_URL", "https://apis.cequens.com")
    username = fields.String(
        data_key="OTPSVC_CEQUENS_USERNAME", required=True, validate=validate.Length(min=1)
    )
    api_key = secret_field("OTPSVC_CEQUENS_API_KEY")
    voices = MappingSetting(
        "OTPSVC_CEQUENS_VOICES",
        keys=LANGUAGE_TAGS,
        value_pattern=VOICE_NAME,
        what="CEQUENS voice name",
        defaults=DEFAULT_VOICES,
    )
    call_fields = MappingSetting(
        "OTPSVC_CEQUENS_FIELDS",
        keys=UNCONFIRMED_FIELDS,
        value_pattern=FIELD_NAME,
        what="JSON field name",
        defaults=UNCONFIRMED_FIELDS,
    )

    @post_load
    def _build(self, data: dict[str, Any], **_: object) -> CequensSettings:
        names = {**CONFIRMED_FIELDS, **data["call_fields"]}
        if len(set(names.values())) != len(names):
            raise ValidationError(
                "two call fields would have the same name", "OTPSVC_CEQUENS_FIELDS"
            )
        return CequensSettings(
            base_url=str(data["base_url"]).rstrip("/"),
            username=str(data["username"]),
            api_key=str(data["api_key"]),
            voices=dict(data["voices"]),
            call_fields=names,
        )


def callback_urls(public_url: str, call: CallRequest) -> tuple[str, str]:
    """(status URL, DTMF URL) of one send, each with its own token."""
    base = f"{public_url}/webhooks/cequens"
    return f"{base}/{call.status_token}/status", f"{base}/{call.dtmf_token}/dtmf"


class CequensProvider(HttpProvider):
    name = "cequens"
    supports_dtmf = True

    def __init__(
        self,
        settings: CequensSettings,
        timeouts: Timeouts,
        speech: Speech,
        public_url: str,
        clock: Any = time.time,
    ) -> None:
        super().__init__(timeouts)
        self.settings = settings
        self.public_url = public_url
        self.speech = speech
        self.clock = clock
        self._token: str | None = None
        self._token_expires = 0.0
        self._lock = threading.Lock()

    def _sign_in(self) -> str:
        user_field, key_field = SIGNIN_FIELDS
        try:
            response = self.post(
                self.settings.base_url + SIGNIN_PATH,
                json={user_field: self.settings.username, key_field: self.settings.api_key},
            )
        except ProviderError as exc:
            # No call can have been placed before a token exists: never an ambiguous failure.
            raise ProviderError(
                self.name, f"sign-in failed: {exc.reason}", ambiguous=False, health=True
            ) from exc
        payload = json_body(response)
        data = payload.get("data") if isinstance(payload, dict) else None
        token = data.get(TOKEN_FIELD) if isinstance(data, dict) else None
        if response.status_code != 200 or not isinstance(token, str) or not token:
            raise ProviderError(
                self.name,
                "sign-in refused",
                http_status=response.status_code,
                provider_code=_reply_code(payload),
                provider_text=_reply_text(payload),
                ambiguous=False,  # no call can be placed without a token
                health=True,  # a refused sign-in refuses every call
            )
        return token

    def token(self, *, renew: bool = False) -> str:
        """The cached token, signing in when there is none, it is about to expire, or on renew."""
        with self._lock:
            now = self.clock()
            if renew or self._token is None or now >= self._token_expires - TOKEN_MARGIN_SECONDS:
                self._token = self._sign_in()
                self._token_expires = _expiry(self._token) or now + DEFAULT_TOKEN_SECONDS
            return self._token

    def spoken_text(self, call: CallRequest) -> str:
        return str(self.body_for(call)[self.settings.call_fields["text"]])

    def body_for(self, call: CallRequest) -> dict[str, Any]:
        language = language_of(call.locale)
        voice = self.settings.voices.get(language)
        if voice is None:
            # Start-up refuses a route whose countries' languages have no voice; a request that
            # asks for another language is passed to the next provider of its route.
            raise ProviderError(
                self.name, f"no voice for locale {language}", ambiguous=False, health=False
            )
        keypress = call.mode == "keypress"
        # CEQUENS repeats the whole text itself ("repeats"): the code is read once in it.
        text = render_text(call.spoken(self.speech.brand), call.code, repeats=1)
        status_url, dtmf_url = callback_urls(self.public_url, call)
        values: dict[str, Any] = {
            "recipient": call.phone.lstrip("+"),
            "text": text,
            "voice": voice,
            "neural": False,
            # A template of the client's says the code as often as it means to ({repeat});
            # the built-in script is said whole once per repeat.
            "repeats": 1 if call.template else call.repeats or self.speech.repeats,
            "answer_timeout": 30,
            "collect_dtmf": keypress,
            "status_callback": status_url,
            "metadata": {"key": "verification", "value": call.verification_id},
        }
        if keypress:
            values["dtmf_callback"] = dtmf_url
        names = self.settings.call_fields
        return {names[key]: value for key, value in values.items()}

    def place_call(self, call: CallRequest) -> CallResult:
        body = self.body_for(call)
        url = self.settings.base_url + CALL_PATH
        response = self.post(url, json=body, headers=self._auth(self.token()))
        if response.status_code == 401:
            # An expired or revoked token: the call was not placed, so one retry is safe.
            response = self.post(url, json=body, headers=self._auth(self.token(renew=True)))
        payload = json_body(response)
        reply = _reply_code(payload)
        if response.status_code not in (200, 201, 202) or reply not in (None, "0"):
            raise ProviderError(
                self.name,
                "call refused",
                http_status=response.status_code,
                provider_code=reply,
                provider_text=_reply_text(payload),
            )
        data = payload.get("data") if isinstance(payload, dict) else None
        call_id = next(
            (str(data[f]) for f in CALL_ID_FIELDS if isinstance(data, dict) and data.get(f)),
            None,
        )
        return CallResult(provider=self.name, message_id=call_id)

    @staticmethod
    def _auth(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}


def _reply_code(payload: Any) -> str | None:
    if isinstance(payload, dict) and payload.get("replyCode") is not None:
        return str(payload["replyCode"])
    return None


def _reply_text(payload: Any) -> str | None:
    if isinstance(payload, dict):
        text = payload.get("replyMessage") or payload.get("message")
        return str(text)[:200] if text else None
    return None


def _expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT (not verified: it is only a hint for when to renew)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return None
