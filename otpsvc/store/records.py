"""What the store's scripts hand back (a reservation, a check's ticket, a ladder's claim), the
scripts' source, and which clients' verifications write events."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from importlib import resources

log = logging.getLogger("otpsvc.store")

#: A record's mode field ``m`` per mode (absent for code mode), and back.
MODE_FIELDS = {"code": "", "keypress": "k", "match": "n"}
MODES_BY_FIELD = {field: mode for mode, field in MODE_FIELDS.items()}

#: How long a number's failed checks are remembered.
FAILURE_WINDOW_MS = 86_400_000


@dataclass(frozen=True)
class Reservation:
    """What reserve decided, with the verification record as it stands after that decision."""

    outcome: str
    id: str
    record: dict[str, str]


@dataclass(frozen=True)
class LadderClaim:
    """A due escalation step, as ``ladder_claim.lua`` handed it to one worker."""

    #: The ladder the verification was started with (``voice:termii/45,voice:sevenio``).
    ladder: str
    #: The step of the send in place (0 for the first call).
    current: int
    #: The number, sealed by the keyring.
    sealed: str
    client: str
    #: The record's mode field: ``k`` for keypress, ``n`` for match, ``''`` for code.
    mode: str
    locale: str
    #: What made the step due: the last call's failed status, or ``timeout``.
    why: str
    #: Whose open verification it is, behind a gateway ('' for the client's own): see
    #: :meth:`VerificationStore.open_key`.
    owner: str
    #: The number's key the verification was started under: a step uses it (not the key of the
    #: secret current now), so a rotated secret does not lose the verification.
    phone_key: str
    #: The brand the start named (a reseller's), '' for the client's own.
    brand: str
    #: The person it was started for, sealed by the keyring ('' for none).
    person: str


@dataclass(frozen=True)
class CheckTicket:
    outcome: str
    verifier: str
    gen: int
    attempts: int
    expires_at_ms: int
    code_length: int
    #: The provider that took the call ("test" for a test number).
    provider: str = ""
    #: The number's keyed hash, for its failure counters.
    phone_key: str = ""
    #: The masked number (its country labels metrics).
    phone_masked: str = ""
    #: The verification's own cap on attempts (its client's when it was made); 0 when not read.
    max_attempts: int = 0
    #: The escalation step of the send in place (0 for the first call); None without a ladder.
    ladder_step: int | None = None


#: The scripts that change a verification, and so write its events (``_events.lua`` first).
EMITTING = frozenset(
    {
        "finalize",
        "approve",
        "cancel",
        "delivery",
        "keypress",
        "failure",
        "begin_check",
        "expire",
        "ladder_claim",
        "ladder_stop",
        "ladder_skip",
    }
)


def script_source(name: str) -> str:
    scripts = resources.files("otpsvc.store").joinpath("scripts")
    text = scripts.joinpath(f"{name}.lua").read_text()
    if name in EMITTING:
        return scripts.joinpath("_events.lua").read_text() + text
    return text


@dataclass(frozen=True)
class EventOptions:
    """Who gets events, and how long the streams keep them."""

    #: The API clients with a webhook: only their verifications write events.
    clients: Collection[str] = ()
    #: Events older than this are dropped from a stream when another is added (ms).
    max_age_ms: int = 172_800_000
    #: Whether the scripts add outcome entries for the funnel (``OTPSVC_INSIGHTS_DAYS`` > 0).
    outcomes: bool = True

    def args(self) -> list[str | int]:
        """The ARGV tail of a script that may write an event: a fresh event id, the age bound,
        the clients, and whether outcomes are counted for the funnel."""
        wanted = "," + ",".join(sorted(self.clients)) + ","
        return [f"msg_{uuid.uuid4().hex}", self.max_age_ms, wanted, 1 if self.outcomes else 0]
