"""AlphaSMS (Ukraine) voice message: ``POST {base}/api/json.php`` with ``type: voice``.

AlphaSMS answers HTTP 200 whatever happens: the request's ``success``/``error`` and each item's
``success``/``error`` say whether the call was accepted. Errors are text.

Sources of the fields: AlphaSMS's JSON API voice-call doc (``docs/api/json/voice/call.md``):
``auth``; one ``data`` item with ``type: voice``, an integer ``id``, an integer ``phone``,
``message``, ``voice`` (``gender``, ``language``, ``name``: Google text-to-speech names) and
``dtmf``, all required; the answer's ``success``, ``error`` and ``data[].data.msg_id``; the
``Content-Type: application/json`` requirement. The voices per locale below follow the doc's
``uk-UA-Standard-A`` pattern; only the Ukrainian one appears in the doc.

SMS (an escalation ladder's ``sms:alphasms`` step): the same endpoint and answer, one item of
``type: sms`` with ``id``, ``phone``, ``sms_signature`` (the sender, an alpha-name registered with
AlphaSMS) and ``sms_message`` (AlphaSMS's JSON API send-SMS doc, ``docs/api/json/send_sms.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from marshmallow import Schema, fields, post_load, validate

from otpsvc.voice.base import (
    CallRequest,
    CallResult,
    HttpProvider,
    ProviderError,
    Speech,
    Timeouts,
    base_url_field,
    json_body,
    secret_field,
)
from otpsvc.voice.templates import render_sms, render_text

API_PATH = "/api/json.php"

#: Google text-to-speech voices that AlphaSMS names, per locale: (language, voice name).
VOICES: dict[str, tuple[str, str]] = {
    "uk": ("uk-UA", "uk-UA-Standard-A"),
    "en": ("en-US", "en-US-Standard-C"),
    "fr": ("fr-FR", "fr-FR-Standard-A"),
    "de": ("de-DE", "de-DE-Standard-A"),
    "ar": ("ar-XA", "ar-XA-Standard-A"),
    "pt": ("pt-PT", "pt-PT-Standard-A"),
    "es": ("es-ES", "es-ES-Standard-A"),
}


@dataclass(frozen=True)
class AlphasmsSettings:
    base_url: str
    api_key: str
    #: The alpha-name SMS go out under (``sms_signature``); without it no SMS is sent.
    sender: str | None = None

    def __repr__(self) -> str:
        return f"AlphasmsSettings(base_url={self.base_url!r})"


class AlphasmsSettingsSchema(Schema):
    base_url = base_url_field("OTPSVC_ALPHASMS_BASE_URL", "https://alphasms.ua")
    api_key = secret_field("OTPSVC_ALPHASMS_API_KEY")
    sender = fields.String(
        data_key="OTPSVC_ALPHASMS_SENDER",
        load_default=None,
        validate=validate.Regexp(r"\A[A-Za-z0-9 .-]{2,11}\Z", error="2-11 letters and digits"),
    )

    @post_load
    def _build(self, data: dict[str, Any], **_: object) -> AlphasmsSettings:
        return AlphasmsSettings(
            base_url=str(data["base_url"]).rstrip("/"),
            api_key=str(data["api_key"]),
            sender=data["sender"],
        )


def item_id(verification_id: str) -> int:
    """AlphaSMS wants an integer id per item: 48 bits of the verification id's random part."""
    return int(verification_id[4:16], 16)


class AlphasmsProvider(HttpProvider):
    name = "alphasms"

    def __init__(self, settings: AlphasmsSettings, timeouts: Timeouts, speech: Speech) -> None:
        super().__init__(timeouts)
        self.settings = settings
        self.speech = speech
        self.url = settings.base_url + API_PATH
        self.supports_sms = settings.sender is not None

    def spoken_text(self, call: CallRequest) -> str:
        if call.channel == "sms":
            return render_sms(call.spoken(self.speech.brand), call.code)
        return str(self.body_for(call)["data"][0]["message"])

    def body_for(self, call: CallRequest) -> dict[str, Any]:
        locale = call.locale if call.locale in VOICES else "en"
        language, voice_name = VOICES[locale]
        return {
            "auth": self.settings.api_key,
            "data": [
                {
                    "type": "voice",
                    "id": item_id(call.verification_id),
                    "phone": int(call.phone.lstrip("+")),
                    "message": render_text(
                        call.spoken(self.speech.brand, locale=locale),
                        call.code,
                        repeats=call.repeats or self.speech.repeats,
                    ),
                    "voice": {"gender": "female", "language": language, "name": voice_name},
                    "dtmf": False,
                }
            ],
        }

    def send_sms(self, call: CallRequest) -> CallResult:
        if self.settings.sender is None:
            raise ProviderError(self.name, "no OTPSVC_ALPHASMS_SENDER for SMS", health=False)
        item = {
            "type": "sms",
            "id": item_id(call.verification_id),
            "phone": int(call.phone.lstrip("+")),
            "sms_signature": self.settings.sender,
            "sms_message": self.spoken_text(call),
        }
        return self._send({"auth": self.settings.api_key, "data": [item]}, "SMS")

    def place_call(self, call: CallRequest) -> CallResult:
        return self._send(self.body_for(call), "call")

    def _send(self, body: dict[str, Any], what: str) -> CallResult:
        response = self.post(self.url, json=body)
        payload = json_body(response)
        if response.status_code != 200 or not isinstance(payload, dict):
            raise ProviderError(
                self.name, "unexpected answer", http_status=response.status_code, health=True
            )
        if not _succeeded(payload.get("success")):
            # The whole request was refused (a bad key, no balance): the account, not a number.
            raise ProviderError(
                self.name,
                "request refused",
                provider_text=str(payload.get("error") or "")[:200],
                health=True,
            )
        items = payload.get("data")
        item = items[0] if isinstance(items, list) and items else None
        if not isinstance(item, dict) or not _succeeded(item.get("success")):
            error = item.get("error") if isinstance(item, dict) else "no item in the answer"
            raise ProviderError(self.name, f"{what} refused", provider_text=str(error)[:200])
        data = item.get("data")
        message_id = data.get("msg_id") if isinstance(data, dict) else None
        return CallResult(provider=self.name, message_id=str(message_id) if message_id else None)


def _succeeded(value: object) -> bool:
    """AlphaSMS's ``success``: its doc table types it "integer" while its examples show ``true``;
    both ``true`` and ``1`` mean success (``false``, ``0`` and anything else do not)."""
    return value is True or (type(value) is int and value == 1)
