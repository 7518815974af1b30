"""Plain data of the verification lifecycle."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    CANCELED = "canceled"
    EXPIRED = "expired"
    FAILED = "failed"
    DENIED = "denied"
    MAX_ATTEMPTS_REACHED = "max_attempts_reached"


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

    @property
    def attempts_remaining(self) -> int:
        return max(0, self.max_attempts - self.attempts)


@dataclass(frozen=True)
class StartOutcome:
    verification: Verification
    created: bool


@dataclass(frozen=True)
class CheckOutcome:
    id: str
    valid: bool
    status: Status
    attempts_remaining: int
