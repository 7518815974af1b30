"""The verification lifecycle: start (or resend), check, read and cancel.

Every decision that must hold under concurrency is taken inside one Lua script in the store; this
module generates codes, hashes them, places calls and turns store outcomes into results or errors.
All time comes from one clock, so expiry is tested without sleeping.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import phonenumbers

from otpsvc import metrics
from otpsvc.config import Settings, TestNumber
from otpsvc.core.abuse import AbusePolicy, refusal_error
from otpsvc.core.audit import audit
from otpsvc.core.codes import generate_code, new_verification_id
from otpsvc.core.keyring import Keyring
from otpsvc.core.models import CheckOutcome, StartOutcome, Status, Verification
from otpsvc.core.phones import Phone
from otpsvc.errors import (
    DeliveryFailed,
    InvalidRequest,
    MaxAttemptsReached,
    MaxSendsReached,
    NotFound,
    NumberBlocked,
    OtpError,
    ProvidersBusy,
    RateLimited,
    ResendTooSoon,
    RetryLater,
    TooManyFailedChecks,
)
from otpsvc.logs import SAMPLER
from otpsvc.store import Reservation, VerificationStore
from otpsvc.store.gate import Gate
from otpsvc.store.velocity import VelocityStore
from otpsvc.voice.base import CallRequest, VoiceProvider
from otpsvc.voice.dispatch import DeliveryError, Dispatcher, NoRoute
from otpsvc.voice.scripts import choose_locale

log = logging.getLogger("otpsvc.core")

Clock = Callable[[], float]


@dataclass(frozen=True)
class Policy:
    code_length: int
    code_ttl_ms: int
    max_attempts: int
    max_sends: int
    resend_cooldown_ms: int
    default_locale: str
    deny_block_ms: int
    deny_clients: int
    max_failures: int
    max_failures_all: int
    slow_ms: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(
            code_length=settings.code_length,
            code_ttl_ms=settings.code_ttl * 1000,
            max_attempts=settings.max_check_attempts,
            max_sends=settings.max_sends,
            resend_cooldown_ms=settings.resend_cooldown * 1000,
            default_locale=settings.default_locale,
            deny_block_ms=settings.deny_block * 1000,
            deny_clients=settings.deny_clients,
            max_failures=settings.max_failed_checks_per_number,
            max_failures_all=settings.max_failed_checks_all_clients,
            slow_ms=settings.failed_checks_slowdown * 1000,
        )


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


class VerificationService:
    def __init__(
        self,
        *,
        store: VerificationStore,
        keyring: Keyring,
        dispatcher: Dispatcher,
        policy: Policy,
        abuse: AbusePolicy,
        velocity: VelocityStore,
        clock: Clock,
        test_numbers: Mapping[str, TestNumber] | None = None,
        allowed_countries: frozenset[str] | None = None,
    ) -> None:
        self.test_numbers = dict(test_numbers or {})
        self.allowed_countries = allowed_countries
        self.abuse = abuse
        self.velocity = velocity
        self.store = store
        self.keyring = keyring
        self.dispatcher = dispatcher
        self.policy = policy
        self.clock = clock

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def start(
        self,
        *,
        client: str,
        phone: Phone,
        code_length: int | None = None,
        locale: str | None = None,
        client_ref: str | None = None,
        mode: str = "code",
        end_user_ip: str = "unknown",
        end_user_id: str | None = None,
        gate: Gate | None = None,
    ) -> StartOutcome:
        """:meth:`_start` in a slot of the worker's bulkhead, counted in
        ``otpsvc_verifications_started_total``. Without a free slot the start is refused at once
        (``providers_busy``), counting only its request limits."""
        country = metrics.country_label(phone.region, self.allowed_countries)
        with self.dispatcher.bulkhead.slot() as held:
            if not held:
                self.count_refused(phone, mode)
                metrics.REFUSALS.labels("providers_busy").inc()
                if gate is not None:
                    gate.run()
                raise ProvidersBusy(
                    1, "this server has as many calls waiting on providers as it may; retry"
                )
            try:
                outcome = self._start(
                    client=client,
                    phone=phone,
                    code_length=code_length,
                    locale=locale,
                    client_ref=client_ref,
                    mode=mode,
                    end_user_ip=end_user_ip,
                    end_user_id=end_user_id,
                    gate=gate,
                    country=country,
                )
            except DeliveryFailed as exc:
                # Labelled with the provider that failed last, so a dashboard shows whose.
                cause = exc.__cause__
                failed = cause.last_provider if isinstance(cause, DeliveryError) else ""
                metrics.STARTS.labels(failed or "none", country, mode, "failed").inc()
                raise
            except OtpError:
                self.count_refused(phone, mode)
                raise
        verification = outcome.verification
        result = "created" if outcome.created else "resent"
        metrics.STARTS.labels(verification.provider or "none", country, mode, result).inc()
        return outcome

    def count_refused(self, phone: Phone, mode: str) -> None:
        """A refused start, in ``otpsvc_verifications_started_total``: also one that its request
        limits refused before the service saw it."""
        country = metrics.country_label(phone.region, self.allowed_countries)
        metrics.STARTS.labels("none", country, mode, "refused").inc()

    def _start(
        self,
        *,
        client: str,
        phone: Phone,
        code_length: int | None = None,
        locale: str | None = None,
        client_ref: str | None = None,
        mode: str = "code",
        end_user_ip: str = "unknown",
        end_user_id: str | None = None,
        gate: Gate | None = None,
        country: str = "other",
    ) -> StartOutcome:
        """Open a verification and call the phone, or resend the client's open one for it.

        ``end_user_ip`` is the person's address (as its limit bucket) and ``end_user_id`` the
        app's id for their account; both are counted only as keyed hashes.

        Order matters: screening (no state), then velocity and budget counting, then the
        reservation in the number's own slot; a reservation that refuses hands the count back.
        A test number (``OTPSVC_TEST_NUMBERS``) places no call and counts against no call limit.
        """
        test = self._test_number(phone, client)
        try:
            if test is not None:
                if mode != "code":
                    raise InvalidRequest({"mode": ["a test number takes code mode only"]})
                route: tuple[VoiceProvider, ...] = ()
            else:
                self.abuse.screen(phone, client)
                try:
                    route = self.dispatcher.route_for(phone.country_code, mode)
                except NoRoute as exc:
                    raise InvalidRequest({"mode": [str(exc)]}) from exc
            now_ms = self._now_ms()
            phone_key = self.keyring.phone_key(phone.e164)
            earlier = self.store.earlier_blocks(
                self.keyring.earlier_phone_keys(phone.e164),
                client=client,
                now_ms=now_ms,
                max_failures=self.policy.max_failures,
                deny_ms=self.policy.deny_block_ms,
                deny_clients=self.policy.deny_clients,
            )
            self._refuse_unless_sendable(earlier, now_ms, client, phone)
        except OtpError:
            # Refused before the gate's round trip: the request still counts against its
            # limits, and over them it is a 429, as if the gate had gone first.
            if gate is not None:
                gate.run()
            raise
        candidate_id = new_verification_id(VerificationStore.id_prefix(phone_key))
        # The counters' member is random, not the verification id: a Redis dump must not join
        # a counter to a verification record (and so to its masked number).
        member = secrets.token_hex(8)
        counted = []
        open_key = self.store.open_key(client, phone_key)
        if test is None:
            counted = self.abuse.counters(
                phone=phone,
                phone_key=phone_key,
                client=client,
                ip=end_user_ip,
                user_id=end_user_id,
                keyed=self.keyring.subject_key,
            )
            # The client's open verification is read in the same round trip, so that reserve
            # can declare its record among its keys; the request limits pass first, in it too.
            refusal, open_id = self.velocity.count_and_read(counted, member, now_ms, open_key, gate)
            if refusal is not None:
                raise refusal_error(refusal, phone, client)
        else:
            if gate is not None:
                gate.run()
            open_id = self.store.open_id(client, phone_key)
        fields: dict[str, str | int] = {
            "c": client,
            "pk": phone_key,
            "pm": phone.masked,
            "len": len(test.code) if test else code_length or self.policy.code_length,
            "loc": choose_locale(locale, phone.region, self.policy.default_locale),
        }
        if client_ref:
            fields["ref"] = client_ref
        if mode == "keypress":
            fields["m"] = "k"
        reservation = self.store.reserve(
            now_ms=now_ms,
            candidate_id=candidate_id,
            client=client,
            phone_key=phone_key,
            ttl_ms=self.policy.code_ttl_ms,
            max_sends=self.policy.max_sends,
            cooldown_ms=self.policy.resend_cooldown_ms,
            max_attempts=self.policy.max_attempts,
            max_failures=self.policy.max_failures,
            max_failures_all=self.policy.max_failures_all,
            slow_ms=self.policy.slow_ms,
            deny_ms=self.policy.deny_block_ms,
            deny_clients=self.policy.deny_clients,
            key_id=self.keyring.current_id,
            fields=fields,
            open_id=open_id,
            mode=mode,
        )
        if reservation.outcome not in ("new", "resend") and counted:
            self.velocity.refund(counted, member)
        self._refuse_unless_sendable(reservation, now_ms, client, phone)
        record = reservation.record
        gen = int(record["g"])
        if test is not None:
            return self._start_test_number(client, phone, reservation, test)

        if mode == "keypress":
            code, verifier = "", ""
        else:
            code = generate_code(
                int(record["len"]), leading_zero=not self.dispatcher.needs_numeric_code(route)
            )
            verifier = self.keyring.hash_code(reservation.id, code)
        call = CallRequest(
            verification_id=reservation.id,
            phone=phone.e164,
            code=code,
            locale=record["loc"],
            mode=mode,
            status_token=self.keyring.callback_token(reservation.id, gen, "status"),
            dtmf_token=self.keyring.callback_token(reservation.id, gen, "dtmf"),
            client=client,
            country=country,
        )
        budget = self.abuse.budget_counters()

        def may_retry(attempt: int) -> bool:
            refused = self.velocity.count(budget, f"{member}.{attempt}", self._now_ms())
            if refused is not None:
                audit("fraud_block", id=reservation.id, client=client, reason="velocity_budget")
            return refused is None

        try:
            result = self.dispatcher.place(route, call, may_retry=may_retry)
        except DeliveryError as exc:
            self.store.finalize(
                reservation.id,
                gen,
                accepted=False,
                verifier="",
                provider=exc.last_provider,
                message_id=None,
                delivery_status="failed",
                now_ms=self._now_ms(),
            )
            audit(
                "delivery_failed",
                id=reservation.id,
                client=client,
                phone=phone.masked,
                providers=[e.provider for e in exc.errors],
                reasons={e.provider: e.reason for e in exc.errors},
            )
            raise DeliveryFailed(
                "no provider accepted the call; no code was issued",
                verification_id=reservation.id,
            ) from exc

        indexed = self.dispatcher.providers[result.provider].reports_by_message_id
        outcome = self.store.finalize(
            reservation.id,
            gen,
            accepted=True,
            verifier=verifier,
            provider=result.provider,
            message_id=result.message_id,
            delivery_status=result.status,
            now_ms=self._now_ms(),
            # Reports may come a while after the code expired; an hour covers them.
            index_message_ms=self.policy.code_ttl_ms + 3_600_000 if indexed else 0,
        )
        created = reservation.outcome == "new"
        if outcome != "ok":
            # Canceled, or replaced by a concurrent resend, while the call was being placed.
            log.info("send %s of %s was %s", gen, reservation.id, outcome)
            return StartOutcome(self.get(client=client, verification_id=reservation.id), created)
        audit(
            "start",
            id=reservation.id,
            client=client,
            phone=phone.masked,
            send=int(record["s"]),
            provider=result.provider,
            delivery=result.status,
            # What a provider's support asks for when a call did not arrive.
            provider_message_id=result.message_id,
        )
        record.update(p=result.provider, ds=result.status)
        if result.message_id:
            record["mid"] = result.message_id
        return StartOutcome(self._to_verification(reservation.id, record), created)

    def _country_of(self, masked: str) -> str:
        """The country label of a masked number (``+234*******567``): its calling code's region."""
        digits = masked[1:].split("*", 1)[0]
        region = (
            phonenumbers.region_code_for_country_code(int(digits)) if digits.isdigit() else None
        )
        return metrics.country_label(region, self.allowed_countries)

    def _test_number(self, phone: Phone, client: str) -> TestNumber | None:
        """The number's test entry while it is active and open to this client; after its last
        day, or for another client than the one it is scoped to, it is an ordinary number."""
        test = self.test_numbers.get(phone.e164)
        if test is None or not test.serves(client):
            return None
        today = datetime.fromtimestamp(self.clock(), UTC).date()
        return test if test.active_on(today) else None

    def _start_test_number(
        self, client: str, phone: Phone, reservation: Reservation, test: TestNumber
    ) -> StartOutcome:
        """No call: the fixed code is stored like any code and passes the normal checks."""
        verifier = self.keyring.hash_code(reservation.id, test.code)
        gen = int(reservation.record["g"])
        self.store.finalize(
            reservation.id,
            gen,
            accepted=True,
            verifier=verifier,
            provider="test",
            message_id=None,
            delivery_status="test",
            now_ms=self._now_ms(),
        )
        audit(
            "test_number",
            id=reservation.id,
            client=client,
            phone=phone.masked,
            send=int(reservation.record["s"]),
        )
        return StartOutcome(
            self.get(client=client, verification_id=reservation.id),
            reservation.outcome == "new",
        )

    def _refuse_unless_sendable(
        self, reservation: Reservation, now_ms: int, client: str, phone: Phone
    ) -> None:
        record = reservation.record
        refusal = REFUSALS.get(reservation.outcome)
        if refusal is None:
            return
        error, until_field, message, limit, scope = refusal
        until_ms = int(record.get(until_field, 0))
        # Refusals about the client's own open verification name it; the others name nothing.
        about = (
            reservation.id if reservation.outcome in ("locked", "max_sends", "cooldown") else None
        )
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

    def check(
        self, *, client: str, verification_id: str, code: str, gate: Gate | None = None
    ) -> CheckOutcome:
        """Compare a code once. The attempt is counted before the comparison, atomically, once
        ``gate`` (the request limits) passed."""
        now_ms = self._now_ms()
        max_attempts = self.policy.max_attempts
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
                {"bad_length": "invalid"}.get(ticket.outcome, ticket.outcome)
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
        remaining = max(0, max_attempts - ticket.attempts)
        if ticket.outcome == "no_code":
            return CheckOutcome(verification_id, False, Status.PENDING, remaining)

        if self.keyring.verify_code(ticket.verifier, verification_id, code):
            result = self.store.approve(verification_id, gen=ticket.gen, now_ms=self._now_ms())
            if result == "approved":
                audit("check", id=verification_id, client=client, result="approved")
                metrics.CHECKS.labels("approved").inc()
                metrics.APPROVALS.labels(
                    ticket.provider or "none", self._country_of(ticket.phone_masked)
                ).inc()
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
        metrics.CHECKS.labels("wrong_code").inc()
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

    def get(self, *, client: str, verification_id: str) -> Verification:
        fields = self.store.load(verification_id)
        if not fields or fields.get("c") != client:
            raise NotFound("no verification with this id")
        return self._to_verification(verification_id, fields)

    def cancel(self, *, client: str, verification_id: str) -> Verification:
        result = self.store.cancel(
            verification_id,
            client=client,
            now_ms=self._now_ms(),
            max_attempts=self.policy.max_attempts,
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
        """Apply a key pressed on a keypress-mode call: 1 approves, 9 denies and blocks the
        number for the client whose call it was (for every client once several clients' calls
        were denied).

        The press must be bound to the send: it comes from the provider that took the call, and
        either with the call's message id or through the send's callback token made with the
        send's own secret (``key_id``). One key press per send is accepted; a report about an
        older send (``gen``) is not."""
        verification_id = self._find(verification_id, provider, message_id)
        fields = self.store.load(verification_id) if verification_id else {}
        if not verification_id or not fields:
            return "unknown"
        result = self.store.record_keypress(
            verification_id,
            client=fields["c"],
            phone_key=fields["pk"],
            key=key,
            now_ms=self._now_ms(),
            deny_ms=self.policy.deny_block_ms,
            provider=provider,
            message_id=message_id,
            gen=gen,
            key_id=key_id,
        )
        audit("keypress", id=verification_id, client=fields["c"], phone=fields["pm"], result=result)
        if result == "approved":
            metrics.APPROVALS.labels(
                fields.get("p") or "none", self._country_of(fields["pm"])
            ).inc()
        return result

    def _find(
        self, verification_id: str | None, provider: str, message_id: str | None
    ) -> str | None:
        """The verification a callback is about: named directly, or by the provider's message id."""
        if verification_id is None and message_id:
            return self.store.verification_for_message(provider, message_id)
        return verification_id

    def _to_verification(self, verification_id: str, f: dict[str, str]) -> Verification:
        return Verification.from_record(
            verification_id, f, max_attempts=self.policy.max_attempts, now_ms=self._now_ms()
        )
