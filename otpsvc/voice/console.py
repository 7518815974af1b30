"""The dev-mode provider: it places no call, it puts what would be said into the local inbox.

A call with no fault is reported ``completed`` a moment later (picked up and heard), as a
provider's status webhook would. It can be told (``/dev/faults``, or the dev page) to treat the
next call, or every call to a number, as a real provider's call could go otherwise:

- ``no-answer``, ``busy``, ``failed``: the call is accepted, then a delivery report with that
  status arrives as a real provider's webhook would, a moment later, at
  ``POST {OTPSVC_PUBLIC_URL}/webhooks/console/<token>/status``;
- ``timeout``: the request "went out" and no answer came: an ambiguous failure, so the start
  answers with ``delivery.status: unknown`` and the code stays valid;
- ``error``: the provider refused the call: ``502 delivery_failed`` when no other provider
  takes it;
- ``slow``: the provider takes :data:`SLOW_SECONDS` to accept the call (which then goes as
  usual): the start holds one of the server's provider slots that long, so an app can meet
  ``503 providers_busy`` and its own timeouts.

Key presses on a keypress-mode call come from the dev page's "press 1" / "press 9", and on a
match-mode call from its keypad (two digits, or 9), through the same token check a provider's
callback goes through.
"""

from __future__ import annotations

import logging
import threading
import time
from itertools import count

import requests

from otpsvc.dev.inbox import CallInbox, InboxCall
from otpsvc.phones import mask_e164
from otpsvc.voice.base import CallRequest, CallResult, ProviderError, Speech
from otpsvc.voice.scripts import LANGUAGE_TAGS, language_of
from otpsvc.voice.templates import render_sms, render_text

log = logging.getLogger("otpsvc.voice.console")

#: Seconds between a faulty call being accepted and its report, as a real call rings first.
REPORT_DELAY = 1.0
#: Seconds a ``slow`` call keeps the start waiting.
SLOW_SECONDS = 3.0


class ConsoleProvider:
    name = "console"
    numeric_code = False
    supports_dtmf = True
    supports_match = True
    supports_sms = True
    reports_by_message_id = False

    def __init__(self, inbox: CallInbox, speech: Speech, public_url: str | None = None) -> None:
        self.inbox = inbox
        self.speech = speech
        self.public_url = public_url
        self._ids = count(1)
        self._session = requests.Session()
        self._session.trust_env = False
        self.report_delay = REPORT_DELAY

    def spoken_text(self, call: CallRequest) -> str:
        spoken = call.spoken(self.speech.brand, locale=language_of(call.locale))
        if call.channel == "sms":
            return render_sms(spoken, call.code)
        return render_text(spoken, call.code, repeats=call.repeats or self.speech.repeats)

    def send_sms(self, call: CallRequest) -> CallResult:
        """A dev SMS: in the inbox like a call, marked ``sms``; faults apply as to calls."""
        return self.place_call(call)

    def place_call(self, call: CallRequest) -> CallResult:
        fault = self.inbox.take_fault(call.phone)
        if fault == "slow":
            time.sleep(SLOW_SECONDS)
            fault = None
        if fault == "error":
            # Refused before anything rang: nothing reaches the inbox, as with a real refusal.
            raise ProviderError(
                self.name, "call refused (injected fault)", provider_code="error", health=False
            )
        language = language_of(call.locale)
        spoken = call.spoken(self.speech.brand, locale=language)
        text = self.spoken_text(call)
        self.inbox.add(
            InboxCall(
                verification_id=call.verification_id,
                phone=mask_e164(call.phone),
                code=call.code,
                text=text,
                at=time.time() * 1000,
                client=call.client,
                locale=language,
                lang=LANGUAGE_TAGS[language],
                mode=call.mode,
                fault=fault,
                template=spoken.source,
                channel=call.channel,
                send=call.send,
                phone_key=self.inbox.phone_key(call.phone),
                dtmf_token=call.dtmf_token,
                match=call.match,
            )
        )
        if fault == "timeout":
            # The call may be ringing: ambiguous, so no other provider is tried.
            raise ProviderError(self.name, "read timeout (injected fault)", ambiguous=True)
        message_id = f"console-{next(self._ids)}"
        if fault is not None:
            self._report_later(call.status_token, fault)
        elif call.channel == "voice":
            # Picked up and heard to the end, as a real provider then reports: the inbox and
            # GET /otp/{id} show the call completed, not queued forever.
            self._report_later(call.status_token, "completed")
        # The line says where to look, never what was said.
        log.info(
            "dev call %s for verification %s is in the inbox: /dev",
            message_id,
            call.verification_id,
        )
        return CallResult(provider=self.name, message_id=message_id)

    def _report_later(self, token: str, status: str) -> None:
        """Send the call's status to this service's console webhook, as a provider would."""
        if not self.public_url:
            log.warning("no OTPSVC_PUBLIC_URL: the %s report of a dev call is not sent", status)
            return
        url = f"{self.public_url}/webhooks/console/{token}/status"

        def send() -> None:
            try:
                self._session.post(url, json={"status": status}, timeout=5)
            except requests.RequestException as exc:
                # The exception names the URL, which holds the send's token: its type only.
                log.warning(
                    "the dev call's %s report was not delivered: %s", status, type(exc).__name__
                )

        timer = threading.Timer(self.report_delay, send)
        timer.daemon = True
        timer.start()

    def close(self) -> None:
        self._session.close()
