"""The local call inbox of dev mode: what the console provider would have said on the phone.

It lives in the memory of the one dev-mode process. It is the only place besides a real call that
holds a plain code, which is why it exists in dev mode only.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class InboxCall:
    verification_id: str
    phone: str
    code: str
    text: str
    at: float
    client: str = ""


class CallInbox:
    """A bounded, thread-safe list of the latest calls, newest first."""

    def __init__(self, size: int = 50) -> None:
        self._calls: deque[InboxCall] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, call: InboxCall) -> int:
        with self._lock:
            self._calls.appendleft(call)
            return len(self._calls)

    def latest(self, client: str) -> list[dict[str, Any]]:
        """The client's own calls, newest first: one client never sees another's codes."""
        with self._lock:
            return [
                {k: v for k, v in asdict(call).items() if k != "client"}
                for call in self._calls
                if call.client == client
            ]
