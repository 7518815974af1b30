"""The dev-mode provider: it places no call, it puts what would be said into the local inbox."""

from __future__ import annotations

import logging
import time
from itertools import count

from otpsvc.dev.inbox import CallInbox, InboxCall
from otpsvc.voice.base import CallRequest, CallResult, Speech
from otpsvc.voice.scripts import code_text

log = logging.getLogger("otpsvc.voice.console")


class ConsoleProvider:
    name = "console"
    numeric_code = False
    supports_dtmf = False
    reports_by_message_id = False

    def __init__(self, inbox: CallInbox, speech: Speech) -> None:
        self.inbox = inbox
        self.speech = speech
        self._ids = count(1)

    def place_call(self, call: CallRequest) -> CallResult:
        text = code_text(
            call.code, call.locale, brand=self.speech.brand, repeats=self.speech.repeats
        )
        self.inbox.add(
            InboxCall(
                verification_id=call.verification_id,
                phone=call.phone,
                code=call.code,
                text=text,
                at=time.time(),
                client=call.client,
            )
        )
        message_id = f"console-{next(self._ids)}"
        # The line says where to look, never what was said.
        log.info(
            "dev call %s for verification %s is in the inbox: GET /dev/calls",
            message_id,
            call.verification_id,
        )
        return CallResult(provider=self.name, message_id=message_id)

    def close(self) -> None:
        return None
