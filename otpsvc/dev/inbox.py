"""The local call inbox of dev mode: what the console provider would have said on the phone.

It lives in Redis, capped and with a TTL, so every worker and every page reload sees the same
calls. It is the only place besides a real call that holds a plain code, which is why it exists
in dev mode only. A number is kept masked, with its keyed hash for look-ups by number.

Keys (one hash tag, so they share a slot on a cluster):

- ``<prefix>:{dev}:inbox``: a list of JSON calls, newest first, at most ``size``;
- ``<prefix>:{dev}:version``: bumped on every change, so a page knows when to redraw;
- ``<prefix>:{dev}:fault:next``: the fault the next call gets (taken once, by ``GETDEL``);
- ``<prefix>:{dev}:fault:numbers``: a hash, phone key -> the fault every call to it gets.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from otpsvc.store.connection import RedisClient

#: What the console provider can be told to do with a call, instead of ringing normally.
FAULTS = ("no-answer", "busy", "failed", "timeout", "error", "slow")
#: How long the inbox and per-number faults live after their last change.
TTL_SECONDS = 24 * 3600


@dataclass(frozen=True)
class InboxCall:
    verification_id: str
    #: The masked number (``+234*******567``); never the full number.
    phone: str
    code: str
    text: str
    #: Milliseconds since the epoch.
    at: float
    client: str = ""
    locale: str = "en"
    #: The BCP-47 tag of the script's language, for the page's speech synthesis.
    lang: str = "en-US"
    mode: str = "code"
    #: The fault this call was given, if any.
    fault: str | None = None
    send: int = 1
    #: Where the spoken script came from: ``clients.NAME``, ``templates`` or ``built-in``.
    template: str = "built-in"
    #: ``voice``, or ``sms`` for an escalation ladder's SMS step.
    channel: str = "voice"
    #: Server side only: the keyed hash of the number, and the send's key-press token.
    phone_key: str = field(default="", repr=False)
    dtmf_token: str = field(default="", repr=False)
    #: Match mode: the digits the app was given to show ('' on a ladder's later call, which
    #: asks for those already shown).
    match: str = ""
    #: The keys pressed on this call through the dev page, and what they did ("94: wrong").
    pressed: str = ""

    def public(self) -> dict[str, Any]:
        """What a page or an API client may see: no phone key, no token."""
        view = asdict(self)
        del view["phone_key"], view["dtmf_token"]
        return view


def _with_pressed(call: InboxCall, pressed: dict[str, str]) -> InboxCall:
    keys = pressed.get(f"{call.verification_id}:{call.send}")
    return call if keys is None else replace(call, pressed=keys)


class CallInbox:
    """Dev-mode calls and faults in Redis; ``phone_key`` hashes a number as the store does."""

    def __init__(
        self,
        client: RedisClient,
        prefix: str,
        phone_key: Callable[[str], str],
        size: int = 100,
    ) -> None:
        self._redis = client
        self._phone_key = phone_key
        self.size = size
        tag = f"{prefix}:{{dev}}"
        self._list = f"{tag}:inbox"
        self._version = f"{tag}:version"
        self._next_fault = f"{tag}:fault:next"
        self._number_faults = f"{tag}:fault:numbers"
        self._pressed = f"{tag}:pressed"

    def phone_key(self, e164: str) -> str:
        return self._phone_key(e164)

    def add(self, call: InboxCall) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.lpush(self._list, json.dumps(asdict(call)))
        pipe.ltrim(self._list, 0, self.size - 1)
        pipe.expire(self._list, TTL_SECONDS)
        pipe.incr(self._version)
        pipe.expire(self._version, TTL_SECONDS)
        pipe.execute()

    def touch(self) -> None:
        """Something a page shows changed (a status): bump the version."""
        self._redis.incr(self._version)

    def version(self) -> int:
        return int(self._redis.get(self._version) or 0)

    def calls(self) -> list[InboxCall]:
        """Every call, newest first, with the keys pressed on it."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.lrange(self._list, 0, self.size - 1)
        pipe.hgetall(self._pressed)
        raw, pressed = pipe.execute()
        calls = [InboxCall(**json.loads(item)) for item in raw]
        return [_with_pressed(call, pressed) for call in calls]

    def pressed(self, verification_id: str, send: int, keys: str, result: str) -> None:
        """Keys pressed on a send's call through the dev page, and what they did."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(self._pressed, f"{verification_id}:{send}", f"{keys}: {result}")
        pipe.expire(self._pressed, TTL_SECONDS)
        pipe.incr(self._version)
        pipe.execute()

    def latest(self, client: str) -> list[dict[str, Any]]:
        """The client's own calls, newest first: one client never sees another's codes."""
        return [call.public() for call in self.calls() if call.client == client]

    def newest_for(self, client: str, e164: str, since_ms: float = 0) -> InboxCall | None:
        """The client's newest call to a number, made at or after ``since_ms``."""
        key = self.phone_key(e164)
        for call in self.calls():
            if call.client == client and call.phone_key == key and call.at >= since_ms:
                return call
        return None

    def find(self, verification_id: str) -> InboxCall | None:
        """The newest send of a verification."""
        return next((c for c in self.calls() if c.verification_id == verification_id), None)

    # Faults -------------------------------------------------------------------------------

    def set_fault(self, fault: str, e164: str | None = None) -> None:
        """The next call (``e164`` None) or every call to a number gets ``fault``."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}")
        if e164 is None:
            self._redis.set(self._next_fault, fault, ex=TTL_SECONDS)
        else:
            pipe = self._redis.pipeline(transaction=True)
            pipe.hset(self._number_faults, self.phone_key(e164), fault)
            pipe.expire(self._number_faults, TTL_SECONDS)
            pipe.execute()
        self.touch()

    def clear_faults(self) -> None:
        self._redis.delete(self._next_fault, self._number_faults)
        self.touch()

    def faults(self) -> dict[str, Any]:
        """The faults in force: the next call's, and how many numbers have one of their own."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.get(self._next_fault)
        pipe.hlen(self._number_faults)
        upcoming, numbers = pipe.execute()
        return {"next": upcoming, "numbers": int(numbers)}

    def take_fault(self, e164: str) -> str | None:
        """The fault for a call to this number: its own, else the next call's (used up)."""
        own = self._redis.hget(self._number_faults, self.phone_key(e164))
        if own is not None:
            return str(own)
        taken = self._redis.getdel(self._next_fault)
        if taken is not None:
            self.touch()
        return None if taken is None else str(taken)
