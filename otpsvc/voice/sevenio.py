"""seven.io (formerly sms77) text-to-speech call: ``POST {base}/voice``.

seven.io answers HTTP 200 even for errors: the return code is in the body, either the JSON
``success`` field or the first line of a plain-text answer (``100`` = sent). Call status arrives
on the account's webhooks (``voice_status``), signed with the signing key; see
``otpsvc.api.webhooks``.

Sources of the fields:
- ``to``, ``text`` (plain text or SSML, at most 10,000 characters), ``from``, ``json``,
  ``foreign_id``, the ``X-Api-Key`` header and the answer (``success``, ``messages[].id``):
  seven.io's HTTP API docs (``/api/voice``) and its api-schemes OpenAPI file;
- the return codes: seven.io's PHP client (``StatusCode``) and JS client (``ErrorCode``);
- the voice, chosen in the SSML by a ``<voice>`` element whose name is a BCP-47 locale and a
  variant (``female``, ``male``, ``child``): seven.io's announcement of SSML for voice
  messages. The element's exact form is not in the API schema: confirm it with seven.io, or set
  ``OTPSVC_SEVENIO_VOICES``;
- key presses (``voice_dtmf`` webhooks) after a plain text-to-speech call: **nothing public
  confirms them**, so keypress mode on seven.io is off unless ``OTPSVC_SEVENIO_KEYPRESS=true``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from marshmallow import Schema, fields, post_load, validate

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
from otpsvc.voice.templates import render_sms, render_ssml

MAX_TEXT = 10_000
SENT = "100"

# seven.io's return codes (php-client StatusCode, js-client ErrorCode).
RETURN_CODES = {
    "100": "sent",
    "101": "sent partially",
    "201": "invalid sender or country",
    "202": "invalid recipient",
    "300": "missing authentication",
    "301": "recipient missing",
    "305": "text missing",
    "306": "invalid sender",
    "401": "text too long",
    "402": "reload lock: the same call was sent moments ago",
    "403": "daily limit for this number reached",
    "500": "not enough credits",
    "600": "carrier failed",
    "700": "unknown error",
    "900": "invalid API key",
    "901": "signature verification failed",
    "902": "API access disabled or missing rights",
    "903": "server IP not allowed",
}
#: Return codes about the account or the gateway, not one recipient: they count toward the
#: circuit breaker (201-403 are about the request or the number and do not).
HEALTH_CODES = frozenset({"300", "500", "600", "700", "900", "901", "902", "903"})

#: The voice each script is read with: its locale's female voice.
DEFAULT_VOICES = {locale: f"{tag}-female" for locale, tag in LANGUAGE_TAGS.items()}
#: A seven.io voice name: a BCP-47 locale and a variant (``de-DE-female``).
VOICE_NAME = re.compile(r"[A-Za-z]{2,3}(?:-[A-Za-z0-9]{1,8}){1,3}")


@dataclass(frozen=True)
class SevenioSettings:
    base_url: str
    api_key: str
    sender: str | None
    signing_key: str | None
    #: How old a signed webhook may be, seconds: seven.io retries hooks hourly, and its own
    #: verifier allows 300 s of clock skew.
    webhook_max_age: int = 300
    #: The voice for each script's locale (``de`` -> ``de-DE-female``).
    voices: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_VOICES))
    #: Keypress mode on seven.io: off unless the operator confirmed it with seven.io.
    keypress: bool = False
    #: The currency of the seven.io account, in which its answers report prices.
    currency: str = "EUR"

    def __repr__(self) -> str:
        return f"SevenioSettings(base_url={self.base_url!r}, sender={self.sender!r})"


class SevenioSettingsSchema(Schema):
    base_url = base_url_field("OTPSVC_SEVENIO_BASE_URL", "https://gateway.seven.io/api")
    api_key = secret_field("OTPSVC_SEVENIO_API_KEY")
    sender = fields.String(
        data_key="OTPSVC_SEVENIO_FROM", load_default=None, validate=validate.Length(1, 16)
    )
    signing_key = secret_field("OTPSVC_SEVENIO_SIGNING_KEY", required=False)
    webhook_max_age = fields.Integer(
        data_key="OTPSVC_SEVENIO_WEBHOOK_MAX_AGE",
        load_default=300,
        validate=validate.Range(10, 3600),
    )
    voices = MappingSetting(
        "OTPSVC_SEVENIO_VOICES",
        keys=LANGUAGE_TAGS,
        value_pattern=VOICE_NAME,
        what="seven.io voice (a BCP-47 locale and a variant, e.g. de-DE-male)",
        defaults=DEFAULT_VOICES,
    )
    keypress = fields.Boolean(data_key="OTPSVC_SEVENIO_KEYPRESS", load_default=False)
    currency = fields.String(
        data_key="OTPSVC_SEVENIO_CURRENCY",
        load_default="EUR",
        validate=validate.Regexp(
            r"\A[A-Z]{3}\Z", error="an ISO 4217 code in capitals, such as EUR"
        ),
    )

    @post_load
    def _build(self, data: dict[str, Any], **_: object) -> SevenioSettings:
        return SevenioSettings(
            base_url=str(data["base_url"]).rstrip("/"),
            api_key=str(data["api_key"]),
            sender=data["sender"],
            signing_key=data["signing_key"],
            webhook_max_age=int(data["webhook_max_age"]),
            voices=dict(data["voices"]),
            keypress=bool(data["keypress"]),
            currency=str(data["currency"]),
        )


class SevenioProvider(HttpProvider):
    name = "sevenio"

    def __init__(self, settings: SevenioSettings, timeouts: Timeouts, speech: Speech) -> None:
        super().__init__(timeouts)
        self.settings = settings
        self.supports_dtmf = settings.keypress
        self.speech = speech
        self.url = settings.base_url + "/voice"
        self.sms_url = settings.base_url + "/sms"
        self.reports_by_message_id = settings.signing_key is not None

    supports_sms = True

    def spoken_text(self, call: CallRequest) -> str:
        if call.channel == "sms":
            return render_sms(call.spoken(self.speech.brand), call.code)
        return self.text_for(call)

    def send_sms(self, call: CallRequest) -> CallResult:
        """``POST {base}/sms``: the same account, key, form fields and return codes as a call
        (``to``, ``text``, ``from``, ``json=1``, ``foreign_id``; ``success`` 100 when sent)."""
        return self._post(self.sms_url, call, self.spoken_text(call), "SMS")

    def text_for(self, call: CallRequest) -> str:
        voice = self.settings.voices[language_of(call.locale)]
        spoken = call.spoken(self.speech.brand)
        return render_ssml(
            spoken, call.code, repeats=call.repeats or self.speech.repeats, voice=voice
        )

    def place_call(self, call: CallRequest) -> CallResult:
        return self._post(self.url, call, self.text_for(call), "call")

    def _post(self, url: str, call: CallRequest, text: str, what: str) -> CallResult:
        if len(text) > MAX_TEXT:
            raise ProviderError(self.name, f"text longer than {MAX_TEXT} characters")
        form = {"to": call.phone, "text": text, "json": "1", "foreign_id": call.verification_id}
        if self.settings.sender:
            form["from"] = self.settings.sender
        response = self.post(
            url,
            data=form,
            headers={"X-Api-Key": self.settings.api_key, "Accept": "application/json"},
        )
        if response.status_code >= 400:
            raise ProviderError(
                self.name,
                f"{what} refused",
                http_status=response.status_code,
                provider_text=response.text[:200] or None,
            )
        code, message_id, price = _parse(response.text, json_body(response))
        if code != SENT:
            raise ProviderError(
                self.name,
                RETURN_CODES.get(code, "unexpected answer"),
                http_status=response.status_code,
                provider_code=code,
                health=code in HEALTH_CODES or code not in RETURN_CODES,
            )
        return CallResult(
            provider=self.name,
            message_id=message_id,
            reported_price=price,
            reported_currency=self.settings.currency if price is not None else None,
        )


def _parse(text: str, payload: object) -> tuple[str, str | None, str | None]:
    """(return code, message id, price) from a JSON answer (``success``, ``messages[].id``,
    ``total_price``), a plain-text one (code, id and price on three lines), or a bare code."""
    if isinstance(payload, dict):
        messages = payload.get("messages")
        first = messages[0] if isinstance(messages, list) and messages else {}
        message_id = first.get("id") if isinstance(first, dict) else None
        price = _price(text, "total_price")
        return str(payload.get("success", "")), str(message_id) if message_id else None, price
    if isinstance(payload, int):
        return str(payload), None, None
    if isinstance(payload, str):
        # A bare code can come back as a JSON string ("900"): the code without its quotes.
        return payload.strip(), None, None
    lines = [line.strip() for line in text.strip().splitlines()]
    if not lines:
        return "", None, None
    price = lines[2] if len(lines) > 2 and PRICE.match(lines[2]) else None
    return lines[0], lines[1] if len(lines) > 1 else None, price


#: A price as seven.io writes it: a plain decimal number.
PRICE = re.compile(r"\A[0-9]+(\.[0-9]+)?\Z")


def _price(text: str, name: str) -> str | None:
    """A price of a JSON answer exactly as written (read as a decimal, never a float)."""
    try:
        value = json.loads(text, parse_float=Decimal).get(name)
    except (ValueError, AttributeError):
        return None
    if isinstance(value, (Decimal, int)) and not isinstance(value, bool) and value >= 0:
        return f"{value:f}"
    return None
