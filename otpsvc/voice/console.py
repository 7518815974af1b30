"""The dev-mode provider: it places no call, it puts what would be said into the local inbox."""

from __future__ import annotations

import logging
import time
from itertools import count

from otpsvc.dev.inbox import CallInbox, InboxCall
from otpsvc.voice.base import CallRequest, CallResult
from otpsvc.voice.scripts import spoken_text

log = logging.getLogger("otpsvc.voice.console")


class ConsoleProvider:
    name = "console"
    numeric_code = False

    def __init__(self, inbox: CallInbox, brand: str) -> None:
        self.inbox = inbox
        self.brand = brand
        self._ids = count(1)

    def place_call(self, call: CallRequest) -> CallResult:
        text = spoken_text(call.code, call.locale, brand=self.brand)
        self.inbox.add(
            InboxCall(
                verification_id=call.verification_id,
                phone=call.phone,
                code=call.code,
                text=text,
                at=time.time(),
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
