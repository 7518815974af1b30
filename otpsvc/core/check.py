"""Checking a code, once and within the attempts; canceling."""

from __future__ import annotations

from otpsvc import metrics
from otpsvc.core.audit import audit
from otpsvc.core.base import ServiceBase
from otpsvc.core.models import CheckOutcome, Status, Verification
from otpsvc.errors import InvalidRequest, MaxAttemptsReached, NotFound
from otpsvc.logs import SAMPLER
from otpsvc.store.gate import Gate


class Checking(ServiceBase):
    """Compare a code, once, within the attempts; cancel."""

    def check(
        self, *, client: str, verification_id: str, code: str, gate: Gate | None = None
    ) -> CheckOutcome:
        """Compare a code once. The attempt is counted before the comparison, atomically, once
        ``gate`` (the request limits) passed."""
        now_ms = self._now_ms()
        max_attempts = self.policy_for(client).max_attempts
        ticket = self.store.begin_check(
            verification_id,
            client=client,
            now_ms=now_ms,
            max_attempts=max_attempts,
            code_length=len(code),
            gate=gate,
        )
        if ticket.outcome in ("not_found", "locked", "bad_length"):
            metrics.CHECKS.labels(
                metrics.client_label(client),
                {"bad_length": "invalid"}.get(ticket.outcome, ticket.outcome),
            ).inc()
        if ticket.outcome == "not_found":
            if SAMPLER.allow("check_not_found"):
                # An unknown, expired or finished id: a retry, a bug, or someone guessing.
                audit("check", id=verification_id, client=client, result="not_found")
            raise NotFound("no pending verification with this id")
        if ticket.outcome == "locked":
            audit("check_locked", id=verification_id, client=client)
            raise MaxAttemptsReached(
                (ticket.expires_at_ms - now_ms) / 1000,
                "this verification has no check attempts left",
            )
        if ticket.outcome == "bad_length":
            raise InvalidRequest({"code": [f"must be exactly {ticket.code_length} digits"]})
        # The verification keeps the cap it was made with, whatever the client's is now.
        max_attempts = ticket.max_attempts or max_attempts
        remaining = max(0, max_attempts - ticket.attempts)
        if ticket.outcome == "no_code":
            return CheckOutcome(verification_id, False, Status.PENDING, remaining)

        if self.keyring.verify_code(ticket.verifier, verification_id, code):
            result = self.store.approve(verification_id, gen=ticket.gen, now_ms=self._now_ms())
            if result == "approved":
                audit("check", id=verification_id, client=client, result="approved")
                metrics.CHECKS.labels(metrics.client_label(client), "approved").inc()
                metrics.APPROVALS.labels(
                    metrics.client_label(client),
                    ticket.provider or "none",
                    self._country_of(ticket.phone_masked),
                ).inc()
                if ticket.ladder_step is not None:
                    metrics.LADDER_CONVERSIONS.labels(str(ticket.ladder_step + 1)).inc()
                if ticket.provider == "test":
                    audit("test_number", id=verification_id, client=client, result="approved")
                return CheckOutcome(verification_id, True, Status.APPROVED, remaining)
            if result == "not_found":
                raise NotFound("no pending verification with this id")
            # 'superseded': the code was right for a call that a resend has since replaced.
        self.store.count_failure(
            verification_id,
            client=client,
            phone_key=ticket.phone_key,
            now_ms=self._now_ms(),
            max_attempts=max_attempts,
        )
        metrics.CHECKS.labels(metrics.client_label(client), "wrong_code").inc()
        status = Status.MAX_ATTEMPTS_REACHED if remaining == 0 else Status.PENDING
        audit(
            "check",
            id=verification_id,
            client=client,
            result="wrong_code",
            attempts_remaining=remaining,
        )
        if status is Status.MAX_ATTEMPTS_REACHED:
            audit("lockout", id=verification_id, client=client)
        return CheckOutcome(verification_id, False, status, remaining)

    def cancel(self, *, client: str, verification_id: str) -> Verification:
        result = self.store.cancel(
            verification_id,
            client=client,
            now_ms=self._now_ms(),
            max_attempts=self.policy_for(client).max_attempts,
        )
        if result == "not_found":
            raise NotFound("no pending verification with this id")
        if result == "locked":
            verification = self.get(client=client, verification_id=verification_id)
            raise MaxAttemptsReached(
                verification.expires_at - self.clock(),
                "this verification has no check attempts left; it cannot be canceled",
            )
        audit("cancel", id=verification_id, client=client)
        return self.get(client=client, verification_id=verification_id)
