"""The values a start is made of: what it asks for, the ladder step it may place, and the draft
its steps fill in (:mod:`otpsvc.core.start`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from otpsvc.config import TestNumber
from otpsvc.config.model import LadderStep
from otpsvc.core.abuse import AbusePolicy
from otpsvc.core.base import Policy
from otpsvc.core.keyring import Person
from otpsvc.phones import Phone
from otpsvc.store.gate import Gate
from otpsvc.store.velocity import Counter
from otpsvc.voice.base import VoiceProvider


class StepNotTaken(Exception):
    """An escalation step that is not placed: its verification ended (``ended``), or another
    worker took the step (``taken``)."""


@dataclass(frozen=True)
class Escalation:
    """The step of a verification's ladder that a start places (instead of a new start)."""

    verification_id: str
    #: The step (1 for the second call).
    step: int
    #: The ladder the verification was started with.
    steps: tuple[LadderStep, ...]
    #: Whose open verification it is (:meth:`Starting.owner_of`).
    owner: str
    #: The number's key the verification was started under (under an earlier secret, when the
    #: secret was rotated since): the step's keys are the verification's own.
    phone_key: str
    #: The person the verification was started for: the step counts against their limits.
    person: Person


@dataclass(frozen=True)
class StartAsk:
    """What a start asks for: the client, the number and what the request says of the call and
    of the person it is for."""

    client: str
    phone: Phone
    mode: str = "code"
    code_length: int | None = None
    locale: str | None = None
    client_ref: str | None = None
    brand: str | None = None
    #: The person's address (as its limit bucket) and the app's id for their account; both are
    #: counted only as keyed hashes.
    end_user_ip: str = "unknown"
    end_user_id: str | None = None
    #: The end user behind a gateway client, whose open verification for a number is their own
    #: (:meth:`Starting.owner_of`); None for a backend, whose open verification is the client's.
    end_user_scope: str | None = None
    #: The step of a verification's ladder this start places (a resend of it and nothing else).
    escalation: Escalation | None = None


@dataclass
class Draft:
    """A start as its steps fill it in: what screening chose, then what counting and the
    reservation decided."""

    ask: StartAsk
    #: The request limits, run in the round trip of the first store script.
    gate: Gate | None
    country: str
    policy: Policy
    abuse: AbusePolicy
    test: TestNumber | None
    #: Whose open verification it is (:meth:`Starting.owner_of`).
    owner: str
    #: Who the call counts against: the person it was started for (a ladder's step too).
    person: Person
    ladder: tuple[LadderStep, ...]
    #: The ladder step this start places (0: the first call).
    first: int
    channel: str
    route: tuple[VoiceProvider, ...] = ()
    now_ms: int = 0
    phone_key: str = ""
    candidate_id: str = ""
    #: The counters' member: random, not the verification id, so that a Redis dump does not
    #: join a counter to a verification record (and so to its masked number).
    member: str = ""
    counted: list[Counter] = field(default_factory=list)
    #: What the first provider of the route charges for this send (micro-units, by the price
    #: file; None without one): counted against the budgets in money before the call.
    quote: int | None = None
    open_id: str | None = None
    #: The conversion rule's suspension that monitor mode let this send through
    #: (``rule channel destination``; '' for none): its event says so.
    would_block: str = ""
    #: Match mode: the digits this send's answer gives the app to show ('' on a ladder step).
    match: str = ""
