"""Termii voice call: ``POST {base}/api/sms/otp/call`` reads our own code to the phone.

Termii's voice-call codes cannot be checked with Termii's Verify API, so otpsvc checks them itself.
Termii takes the code as a JSON number and speaks it in its own voice; it sends no text of ours.

Sources of the fields:
- the path ``/api/sms/otp/call`` and ``api_key``, ``phone_number`` (digits, no ``+``), ``code``
  ("numeric and length must be between 4 and 8 digits"): Termii's Voice Call page
  (developers.termii.com/voice-call) and the public SDKs that call it;
- the answer ``{"code": "ok", "message_id": ..., "pinId": ...}``: the same docs' sample;
- the base URL: the account's own (dashboard); ``api.ng.termii.com`` is the older docs' default.
Termii documents delivery reports for messages only, not for voice calls: no call status here
depends on them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from marshmallow import Schema, fields, post_load, validate

from otpsvc.voice.base import (
    CallRequest,
    CallResult,
    HttpAnswer,
    HttpProvider,
    ProviderError,
    Timeouts,
    base_url_field,
    json_body,
    secret_field,
)
from otpsvc.voice.templates import render_sms

CALL_PATH = "/api/sms/otp/call"
#: Termii's messaging endpoint ("Send message"): ``api_key``, ``to`` (digits), ``from`` (a
#: registered sender ID), ``sms`` (the text), ``type`` ``plain``, ``channel`` ``generic`` (or
#: ``dnd`` for numbers on the do-not-disturb list); it answers ``message_id`` and
#: ``message`` "Successfully Sent".
SMS_PATH = "/api/sms/send"


@dataclass(frozen=True)
class TermiiSettings:
    base_url: str
    api_key: str
    webhook_secret: str | None = None
    #: The sender ID of SMS steps (registered with Termii); without it no SMS is sent.
    sender: str | None = None
    #: ``generic``, or ``dnd`` to reach numbers on the do-not-disturb list (transactional).
    sms_channel: str = "dnd"

    def __repr__(self) -> str:
        return f"TermiiSettings(base_url={self.base_url!r})"


class TermiiSettingsSchema(Schema):
    base_url = base_url_field("OTPSVC_TERMII_BASE_URL", "https://api.ng.termii.com")
    api_key = secret_field("OTPSVC_TERMII_API_KEY")

    webhook_secret = secret_field("OTPSVC_TERMII_WEBHOOK_SECRET", required=False)
    sender = fields.String(
        data_key="OTPSVC_TERMII_SENDER",
        load_default=None,
        validate=validate.Regexp(r"\A[A-Za-z0-9 ]{3,11}\Z", error="3-11 letters and digits"),
    )
    sms_channel = fields.String(
        data_key="OTPSVC_TERMII_SMS_CHANNEL",
        load_default="dnd",
        validate=validate.OneOf(["dnd", "generic"]),
    )

    @post_load
    def _build(self, data: dict[str, str], **_: object) -> TermiiSettings:
        return TermiiSettings(
            base_url=data["base_url"].rstrip("/"),
            api_key=data["api_key"],
            webhook_secret=data["webhook_secret"],
            sender=data["sender"],
            sms_channel=data["sms_channel"],
        )


class TermiiProvider(HttpProvider):
    name = "termii"
    numeric_code = True

    def __init__(self, settings: TermiiSettings, timeouts: Timeouts) -> None:
        super().__init__(timeouts)
        self.settings = settings
        self.url = settings.base_url + CALL_PATH
        self.sms_url = settings.base_url + SMS_PATH
        self.reports_by_message_id = settings.webhook_secret is not None
        self.supports_sms = settings.sender is not None
        self.speech_brand = "otpsvc"

    def spoken_text(self, call: CallRequest) -> str | None:
        if call.channel == "sms":
            return render_sms(call.spoken(self.speech_brand), call.code)
        return None

    def send_sms(self, call: CallRequest) -> CallResult:
        if self.settings.sender is None:
            raise ProviderError(self.name, "no OTPSVC_TERMII_SENDER for SMS", health=False)
        body = {
            "api_key": self.settings.api_key,
            "to": call.phone.lstrip("+"),
            "from": self.settings.sender,
            "sms": self.spoken_text(call),
            "type": "plain",
            "channel": self.settings.sms_channel,
        }
        response = self.post(self.sms_url, json=body)
        info = self._answer(response, "SMS refused", ok=lambda info: bool(info.get("message_id")))
        return CallResult(provider=self.name, message_id=str(info["message_id"]))

    def place_call(self, call: CallRequest) -> CallResult:
        if call.code.startswith("0"):
            # Sent as a JSON number, a leading zero would be dropped and a wrong code read out.
            raise ProviderError(self.name, "code has a leading zero; Termii takes it as a number")
        body = {
            "api_key": self.settings.api_key,
            "phone_number": call.phone.lstrip("+"),
            "code": int(call.code),
        }
        response = self.post(self.url, json=body)
        info = self._answer(response, "call refused")
        if info.get("code") != "ok":
            raise ProviderError(
                self.name,
                "call not accepted",
                http_status=200,
                provider_code=str(info.get("code")) if info.get("code") is not None else None,
                provider_text=_text(info),
            )
        message_id = info.get("message_id") or info.get("pinId")
        return CallResult(provider=self.name, message_id=str(message_id) if message_id else None)

    def _answer(
        self,
        response: HttpAnswer,
        refused: str,
        ok: Callable[[dict[str, Any]], bool] = lambda info: True,
    ) -> dict[str, Any]:
        """Termii's JSON answer; ProviderError ``refused`` (with Termii's code and words) for an
        HTTP status other than 200, or an answer ``ok`` does not accept."""
        payload = json_body(response)
        info: dict[str, Any] = payload if isinstance(payload, dict) else {}
        if response.status_code != 200 or not ok(info):
            raise ProviderError(
                self.name,
                refused,
                http_status=response.status_code,
                provider_code=str(info["code"]) if "code" in info else None,
                provider_text=_text(info),
            )
        return info


def _text(info: dict[str, Any]) -> str | None:
    """Termii's own words in an answer (``message`` or ``error``), cut short."""
    return str(info.get("message") or info.get("error") or "")[:200] or None
