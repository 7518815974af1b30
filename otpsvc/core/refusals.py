"""Refusals of a start: what it asks for against its client's policy, and what each refusing
outcome of a reservation becomes, audited."""

from __future__ import annotations

from typing import TYPE_CHECKING

from otpsvc.core.audit import audit
from otpsvc.errors import (
    InvalidRequest,
    MaxAttemptsReached,
    MaxSendsReached,
    NumberBlocked,
    RateLimited,
    ResendTooSoon,
    RetryLater,
    TooManyFailedChecks,
)
from otpsvc.phones import Phone
from otpsvc.store import Reservation

if TYPE_CHECKING:
    from otpsvc.core.base import Policy

#: What each refusing outcome of a reservation becomes: the error, the record field that says
#: until when, the message, and the limit that refused with whose count it was (``client``: this
#: client's own; ``global``: every client's together). No message says anything about which
#: other client's traffic a global refusal came from.
REFUSALS: dict[str, tuple[type[RetryLater], str, str, str | None, str | None]] = {
    "locked": (
        MaxAttemptsReached,
        "ea",
        "no check attempts are left for this number; wait for it to expire",
        None,
        None,
    ),
    "max_sends": (
        MaxSendsReached,
        "ea",
        "this verification has been sent the maximum number of times",
        "max_sends",
        "client",
    ),
    "cooldown": (
        ResendTooSoon,
        "ra",
        "a new call for this verification is not allowed yet",
        "resend_cooldown",
        "client",
    ),
    "blocked": (
        NumberBlocked,
        "until",
        "the owner of this number said a recent call from this client was not theirs",
        "deny_block",
        "client",
    ),
    "blocked_all": (
        NumberBlocked,
        "until",
        "the owner of this number said recent calls from several clients were not theirs",
        "deny_block_all",
        "global",
    ),
    "failures": (
        TooManyFailedChecks,
        "until",
        "too many wrong codes for this number today",
        "max_failed_checks_per_number",
        "client",
    ),
    "slowed": (
        RateLimited,
        "until",
        "too many calls for this number; try again later",
        "max_failed_checks_all_clients",
        "global",
    ),
}


def refuse_unless_sendable(
    reservation: Reservation, now_ms: int, client: str, phone: Phone
) -> None:
    record = reservation.record
    refusal = REFUSALS.get(reservation.outcome)
    if refusal is None:
        return
    error, until_field, message, limit, scope = refusal
    until_ms = int(record.get(until_field, 0))
    # Refusals about the client's own open verification name it; the others name nothing.
    about = reservation.id if reservation.outcome in ("locked", "max_sends", "cooldown") else None
    audit(
        "start_refused",
        id=reservation.id,
        client=client,
        phone=phone.masked,
        reason=reservation.outcome,
    )
    raise error(
        (until_ms - now_ms) / 1000,
        message,
        verification_id=about or None,
        limit=limit,
        scope=scope,
    )


def refuse_unless_allowed(
    policy: Policy, mode: str, code_length: int | None, brand: str | None
) -> None:
    """What a start asks for must be within its client's policy."""
    if mode not in policy.modes:
        allowed = " or ".join(sorted(policy.modes))
        raise InvalidRequest({"mode": [f"this client's verifications are {allowed}"]})
    if code_length is not None and code_length < policy.min_code_length:
        raise InvalidRequest(
            {"code_length": [f"this client's codes have at least {policy.min_code_length}"]}
        )
    if brand is not None and not policy.request_brand:
        raise InvalidRequest({"brand": ["this client may not name a brand"]})
