"""Plain data of the verification lifecycle."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from otpsvc.config.model import LadderStep, ladder_of
from otpsvc.store.records import MODES_BY_FIELD

#: How a keypress or match call was answered (the record's ``ke``): see keypress.lua.
ANSWERS = {"c": "confirmed", "m": "matched", "w": "wrong_digits", "d": "denied"}
#: Delivery statuses of a call nobody answered.
UNANSWERED = frozenset({"no-answer", "busy", "failed"})


def mode_of(field: str | None) -> str:
    """The mode a record's ``m`` field names."""
    return MODES_BY_FIELD.get(field or "", "code")


class Status(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    CANCELED = "canceled"
    EXPIRED = "expired"
    FAILED = "failed"
    DENIED = "denied"
    MAX_ATTEMPTS_REACHED = "max_attempts_reached"


@dataclass(frozen=True)
class LadderCall:
    """One call of an escalation ladder: who placed it, when, and why the next one followed."""

    provider: str
    placed_at: float
    #: What made the next step due (no-answer, busy, failed, timeout); None for the last call.
    next_because: str | None = None
    #: ``voice`` or ``sms``.
    channel: str = "voice"
    #: What this call cost (micro-units of the currency, by the price file); None without one.
    cost: int | None = None


@dataclass(frozen=True)
class Ladder:
    """A verification's escalation: the calls placed, the next step's time, why it ended."""

    calls: tuple[LadderCall, ...]
    next_at: float | None = None
    stopped: str | None = None


@dataclass(frozen=True)
class Verification:
    """What a client may know about one of its verifications: never the code or its verifier."""

    id: str
    client: str
    phone_masked: str
    mode: str
    code_length: int
    locale: str
    client_ref: str | None
    status: Status
    attempts: int
    max_attempts: int
    sends: int
    created_at: float
    expires_at: float
    resend_at: float
    provider: str | None
    provider_message_id: str | None
    delivery_status: str | None
    ladder: Ladder | None = None
    #: What its sends cost together (micro-units of the currency, by the price file); None
    #: without one.
    cost: int | None = None
    #: What its providers reported its sends cost (micro-units of ``reported_currency``), for
    #: reconciliation; None where no provider reports a price.
    reported_cost: int | None = None
    reported_currency: str | None = None
    #: Keypress and match mode: how the call was answered (``confirmed``, ``matched``,
    #: ``wrong_digits``, ``denied``, ``no_answer``); None in code mode and while no answer came.
    answer: str | None = None

    @property
    def attempts_remaining(self) -> int:
        return max(0, self.max_attempts - self.attempts)

    @classmethod
    def from_record(
        cls,
        verification_id: str,
        f: Mapping[str, str],
        *,
        max_attempts: int,
        now_ms: int,
        status: Status | None = None,
        next_step_at: float | None = None,
    ) -> Verification:
        """The verification a stored record (or an event's snapshot of it) shows at ``now_ms``;
        ``status`` overrides the one the record and the time give. A record keeps the cap on
        attempts it was made with (``ma``); ``max_attempts`` stands in for one that does not."""
        max_attempts = int(f.get("ma", max_attempts))
        expires_ms = int(f["ea"])
        attempts = int(f.get("a", 0))
        if status is None:
            status = Status(f["st"])
            if status is Status.PENDING:
                if expires_ms <= now_ms:
                    status = Status.EXPIRED
                elif attempts >= max_attempts:
                    status = Status.MAX_ATTEMPTS_REACHED
        return cls(
            id=verification_id,
            client=f["c"],
            phone_masked=f["pm"],
            mode=mode_of(f.get("m")),
            code_length=int(f["len"]),
            locale=f["loc"],
            client_ref=f.get("ref"),
            status=status,
            attempts=attempts,
            max_attempts=max_attempts,
            sends=int(f["s"]),
            created_at=int(f["ca"]) / 1000,
            expires_at=expires_ms / 1000,
            resend_at=int(f["ra"]) / 1000,
            provider=f.get("p"),
            provider_message_id=f.get("mid"),
            delivery_status=f.get("ds"),
            ladder=_ladder(f, next_step_at),
            cost=int(f["co"]) if f.get("co") else None,
            reported_cost=int(f["rp"]) if f.get("rp") else None,
            reported_currency=f.get("rc"),
            answer=_answer(f, status),
        )


def _answer(f: Mapping[str, str], status: Status) -> str | None:
    """How a keypress or match call was answered: the last key press taken, else ``no_answer``
    once the call went unanswered or the verification ended without one."""
    if not f.get("m"):
        return None
    if f.get("ke"):
        return ANSWERS.get(f["ke"])
    if f.get("ds") in UNANSWERED or status is not Status.PENDING:
        return "no_answer"
    return None


#: What made a ladder's next step due, as the record's history spells it.
WHY = {"n": "no-answer", "b": "busy", "f": "failed", "t": "timeout"}


def _ladder(f: Mapping[str, str], next_at: float | None) -> Ladder | None:
    """The record's escalation (fields ``ld``, ``lh``, ``lx``; see finalize.lua), None without
    a ladder."""
    if not f.get("ld"):
        return None
    steps = ladder_of(f["ld"])
    created = int(f["ca"]) / 1000
    calls = []
    costs = [int(c) for c in (f.get("lc") or "").split(",") if c]
    for i, entry in enumerate(filter(None, (f.get("lh") or "").split(","))):
        index, offset, *why = entry.split(".")
        step = steps[int(index)] if int(index) < len(steps) else LadderStep("voice", "?")
        because = WHY.get(why[0]) if why else None
        cost = costs[i] if i < len(costs) else None
        calls.append(LadderCall(step.provider, created + int(offset), because, step.channel, cost))
    return Ladder(tuple(calls), next_at, f.get("lx"))


@dataclass(frozen=True)
class StartOutcome:
    verification: Verification
    created: bool
    #: Match mode: the two digits the app shows on its screen for this send's call (never
    #: stored; only their keyed hash is).
    match: str | None = None


@dataclass(frozen=True)
class CheckOutcome:
    id: str
    valid: bool
    status: Status
    attempts_remaining: int
