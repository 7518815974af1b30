"""Provider callbacks: delivery reports and key presses, bound to the send they are about."""

from __future__ import annotations

from otpsvc import metrics
from otpsvc.core.audit import audit
from otpsvc.core.base import ServiceBase
from otpsvc.core.models import UNANSWERED, mode_of


class ProviderCallbacks(ServiceBase):
    """What providers report about their calls: delivery, and key presses."""

    def delivery_report(
        self,
        *,
        status: str,
        provider: str,
        verification_id: str | None = None,
        message_id: str | None = None,
        gen: int | None = None,
        key_id: str = "",
    ) -> str:
        """Apply ``provider``'s report on a call, found by verification id or by message id.

        ``gen`` names the send the report is about (from a per-send callback URL): a report
        about an older send changes nothing; nor does one about another provider's call, or one
        whose callback token was made with another secret (``key_id``) than the send's."""
        verification_id = self._find(verification_id, provider, message_id)
        if verification_id is None:
            return "unknown"
        result = self.store.record_delivery(
            verification_id,
            message_id=message_id,
            status=status,
            now_ms=self._now_ms(),
            provider=provider,
            gen=gen,
            key_id=key_id,
        )
        audit("delivery", id=verification_id, provider=provider, status=status, result=result)
        metrics.DELIVERY_REPORTS.labels(provider, status).inc()
        if status in UNANSWERED and result == "applied":
            # A keypress or match call nobody answered: no key can come from it.
            fields = self.store.load(verification_id)
            if fields.get("m"):
                metrics.KEYPAD_ANSWERS.labels(
                    metrics.client_label(fields["c"]), mode_of(fields["m"]), "no_answer"
                ).inc()
        return result

    def keypress(
        self,
        *,
        key: str,
        provider: str,
        verification_id: str | None = None,
        message_id: str | None = None,
        gen: int | None = None,
        key_id: str = "",
    ) -> str:
        """Apply the keys pressed on a keypress- or match-mode call. Keypress mode: 1 approves.
        Match mode: the two digits the app showed approve, other digits are a failed attempt
        (counted against the number's failure caps as a wrong code is). Either mode: 9 denies
        and blocks the number for the client whose call it was (for every client once several
        clients' calls were denied).

        The press must be bound to the send: it comes from the provider that took the call, and
        either with the call's message id or through the send's callback token made with the
        send's own secret (``key_id``). One key press per send is accepted; a report about an
        older send (``gen``) is not."""
        verification_id = self._find(verification_id, provider, message_id)
        fields = self.store.load(verification_id) if verification_id else {}
        if not verification_id or not fields:
            return "unknown"
        client, mode = fields["c"], mode_of(fields.get("m"))
        matched, verifier = None, ""
        if mode == "match" and key != "9":
            verifier = fields.get("h", "")
            if not (verifier and len(key) == 2 and key.isascii() and key.isdigit()):
                audit("keypress", id=verification_id, client=client, result="ignored")
                return "ignored"
            matched = self.keyring.verify_code(verifier, verification_id, key)
        max_attempts = self.policy_for(client).max_attempts
        now_ms = self._now_ms()
        result = self.store.record_keypress(
            verification_id,
            client=client,
            phone_key=fields["pk"],
            key=key,
            now_ms=now_ms,
            deny_ms=self.policy.deny_block_ms,
            provider=provider,
            message_id=message_id,
            gen=gen,
            key_id=key_id,
            matched=matched,
            verifier=verifier,
            max_attempts=max_attempts,
        )
        audit("keypress", id=verification_id, client=client, phone=fields["pm"], result=result)
        if result == "wrong":
            self.store.count_failure(
                verification_id,
                client=client,
                phone_key=fields["pk"],
                now_ms=now_ms,
                max_attempts=int(fields.get("ma", max_attempts)),
            )
        # What the result counts as in otpsvc_keypad_answers_total (nothing when ignored).
        approved = "matched" if mode == "match" else "confirmed"
        answer = {"approved": approved, "denied": "denied", "wrong": "wrong_digits"}.get(result)
        if answer is not None:
            metrics.KEYPAD_ANSWERS.labels(metrics.client_label(client), mode, answer).inc()
        if result == "approved":
            metrics.APPROVALS.labels(
                metrics.client_label(client),
                fields.get("p") or "none",
                self._country_of(fields["pm"]),
            ).inc()
        return result

    def _find(
        self, verification_id: str | None, provider: str, message_id: str | None
    ) -> str | None:
        """The verification a callback is about: named directly, or by the provider's message id."""
        if verification_id is None and message_id:
            return self.store.verification_for_message(provider, message_id)
        return verification_id
