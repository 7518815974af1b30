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

from dataclasses import dataclass

from marshmallow import Schema, post_load

from otpsvc.voice.base import (
    CallRequest,
    CallResult,
    HttpProvider,
    ProviderError,
    Timeouts,
    base_url_field,
    json_body,
    secret_field,
)

CALL_PATH = "/api/sms/otp/call"


@dataclass(frozen=True)
class TermiiSettings:
    base_url: str
    api_key: str
    webhook_secret: str | None = None

    def __repr__(self) -> str:
        return f"TermiiSettings(base_url={self.base_url!r})"


class TermiiSettingsSchema(Schema):
    base_url = base_url_field("OTPSVC_TERMII_BASE_URL", "https://api.ng.termii.com")
    api_key = secret_field("OTPSVC_TERMII_API_KEY")

    webhook_secret = secret_field("OTPSVC_TERMII_WEBHOOK_SECRET", required=False)

    @post_load
    def _build(self, data: dict[str, str], **_: object) -> TermiiSettings:
        return TermiiSettings(
            base_url=data["base_url"].rstrip("/"),
            api_key=data["api_key"],
            webhook_secret=data["webhook_secret"],
        )


class TermiiProvider(HttpProvider):
    name = "termii"
    numeric_code = True

    def __init__(self, settings: TermiiSettings, timeouts: Timeouts) -> None:
        super().__init__(timeouts)
        self.settings = settings
        self.url = settings.base_url + CALL_PATH
        self.reports_by_message_id = settings.webhook_secret is not None

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
        payload = json_body(response)
        info = payload if isinstance(payload, dict) else {}
        text = str(info.get("message") or info.get("error") or "")[:200] or None
        if response.status_code != 200:
            raise ProviderError(
                self.name,
                "call refused",
                http_status=response.status_code,
                provider_code=str(info["code"]) if "code" in info else None,
                provider_text=text,
            )
        if info.get("code") != "ok":
            raise ProviderError(
                self.name,
                "call not accepted",
                http_status=200,
                provider_code=str(info.get("code")) if info.get("code") is not None else None,
                provider_text=text,
            )
        message_id = info.get("message_id") or info.get("pinId")
        return CallResult(provider=self.name, message_id=str(message_id) if message_id else None)
