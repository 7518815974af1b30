"""Starting a verification: screening, limits, the reservation, the code and the call."""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from otpsvc import metrics
from otpsvc.config import TestNumber
from otpsvc.config.model import LadderStep, ladder_of
from otpsvc.core.abuse import refusal_error
from otpsvc.core.audit import audit
from otpsvc.core.base import Policy, ServiceBase
from otpsvc.core.codes import generate_code, new_verification_id
from otpsvc.core.keyring import Person
from otpsvc.core.models import StartOutcome
from otpsvc.core.phones import Phone
from otpsvc.errors import (
    DeliveryFailed,
    InvalidRequest,
    MaxAttemptsReached,
    MaxSendsReached,
    NumberBlocked,
    OtpError,
    ProvidersBusy,
    RateLimited,
    ResendTooSoon,
    RetryLater,
    TooManyFailedChecks,
)
from otpsvc.store import Reservation, VerificationStore
from otpsvc.store.gate import Gate
from otpsvc.voice.base import CallRequest, VoiceProvider
from otpsvc.voice.dispatch import DeliveryError, NoRoute
from otpsvc.voice.scripts import choose_locale
from otpsvc.voice.templates import choose_template

log = logging.getLogger("otpsvc.core")


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


def _step_of(ladder: str | None, provider: str, first: int) -> int | None:
    """The ladder step the provider that took the call stands at (from ``first`` on); None
    without a ladder."""
    if not ladder:
        return None
    steps = ladder_of(ladder)
    return next((i for i in range(first, len(steps)) if steps[i].provider == provider), first)


class Starting(ServiceBase):
    """Start a verification (or resend the client's open one) and place its call."""

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
        brand: str | None = None,
        escalation: Escalation | None = None,
        end_user_scope: str | None = None,
    ) -> StartOutcome:
        """:meth:`_start` in a slot of the worker's bulkhead, counted in
        ``otpsvc_verifications_started_total``. Without a slot within the bulkhead's wait the
        start is refused (``providers_busy``), counting only its request limits."""
        country = metrics.country_label(phone.region, self.allowed_countries)
        with self.dispatcher.bulkhead.slot() as held:
            if not held:
                self.count_refused(phone, mode, client)
                metrics.REFUSALS.labels(metrics.client_label(client), "providers_busy").inc()
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
                    brand=brand,
                    escalation=escalation,
                    end_user_scope=end_user_scope,
                )
            except DeliveryFailed as exc:
                # Labelled with the provider that failed last, so a dashboard shows whose.
                cause = exc.__cause__
                failed = cause.last_provider if isinstance(cause, DeliveryError) else ""
                metrics.STARTS.labels(
                    metrics.client_label(client), failed or "none", country, mode, "failed"
                ).inc()
                raise
            except OtpError:
                self.count_refused(phone, mode, client)
                raise
        verification = outcome.verification
        result = "created" if outcome.created else "escalated" if escalation else "resent"
        metrics.STARTS.labels(
            metrics.client_label(client), verification.provider or "none", country, mode, result
        ).inc()
        return outcome

    def _account_key(self, client: str, user_id: str | None) -> str | None:
        """The keyed name the per-account limit counts ``user_id`` of ``client`` by."""
        return self.keyring.subject_key("user", f"{client}\0{user_id}") if user_id else None

    def owner_of(self, client: str, end_user_scope: str | None) -> str:
        """Whose open verification a start resends: the client's (a backend speaks for all its
        users), or behind a gateway the person's, as a keyed hash: one person's start must never
        resend, or learn the id of, another person's verification for the same number."""
        if end_user_scope is None:
            return client
        digest = self.keyring.subject_key("owner", client + "\0" + end_user_scope)
        return f"{client}~{digest}"

    def count_refused(self, phone: Phone, mode: str, client: str) -> None:
        """A refused start, in ``otpsvc_verifications_started_total``: also one that its request
        limits refused before the service saw it."""
        country = metrics.country_label(phone.region, self.allowed_countries)
        metrics.STARTS.labels(metrics.client_label(client), "none", country, mode, "refused").inc()

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
        brand: str | None = None,
        escalation: Escalation | None = None,
        end_user_scope: str | None = None,
    ) -> StartOutcome:
        """Open a verification and call the phone, or resend the client's open one for it; or,
        with ``escalation``, place that step of its ladder (a resend of it and nothing else:
        :class:`StepNotTaken` when it ended, or another worker took the step).

        ``end_user_ip`` is the person's address (as its limit bucket) and ``end_user_id`` the
        app's id for their account; both are counted only as keyed hashes. ``end_user_scope``
        names the end user behind a gateway client, whose open verification for a number is
        their own (:meth:`owner_of`); None for a backend, whose open verification is the
        client's.

        Order matters: screening (no state), then velocity and budget counting, then the
        reservation in the number's own slot; a reservation that refuses hands the count back.
        A test number (``OTPSVC_TEST_NUMBERS``) places no call and counts against no call limit.
        """
        policy, abuse = self.policy_for(client), self.abuse_for(client)
        test = self._test_number(phone, client)
        ladder = escalation.steps if escalation else policy.ladder
        first = escalation.step if escalation else 0
        channel = ladder[first].channel if len(ladder) > 1 else "voice"
        try:
            if escalation is None:
                self._refuse_unless_allowed(policy, mode, code_length, brand)
            if test is not None:
                if mode != "code":
                    raise InvalidRequest({"mode": ["a test number takes code mode only"]})
                route: tuple[VoiceProvider, ...] = ()
            else:
                abuse.screen(phone, client)
                try:
                    if len(ladder) > 1:
                        # A ladder names its providers: this step's first, the rest of its
                        # steps on the same channel as failover should one refuse outright.
                        names = [s.provider for s in ladder[first:] if s.channel == channel]
                        route = self.dispatcher.route_of(names, mode, channel)
                    else:
                        route = self.dispatcher.route_for(
                            phone.country_code, mode, routes=policy.routes, default=policy.providers
                        )
                except NoRoute as exc:
                    raise InvalidRequest({"mode": [str(exc)]}) from exc
            now_ms = self._now_ms()
            phone_key = escalation.phone_key if escalation else self.keyring.phone_key(phone.e164)
            earlier = self.store.earlier_blocks(
                self.keyring.earlier_phone_keys(phone.e164),
                client=client,
                now_ms=now_ms,
                max_failures=policy.max_failures,
                deny_ms=policy.deny_block_ms,
                deny_clients=policy.deny_clients,
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
        owner = escalation.owner if escalation else self.owner_of(client, end_user_scope)
        open_key = self.store.open_key(owner, phone_key)
        # Who the call counts against: the person it was started for (a ladder's step too).
        person = (
            escalation.person
            if escalation
            else Person(end_user_ip, self._account_key(client, end_user_id))
        )
        if test is None:
            counted = abuse.counters(
                phone=phone,
                phone_key=phone_key,
                client=client,
                ip=person.ip,
                user_key=person.user_key,
                keyed=self.keyring.subject_key,
            )
            # The client's open verification is read in the same round trip, so that reserve
            # can declare its record among its keys; the request limits pass first, in it too.
            refusal, open_id = self.velocity.count_and_read(counted, member, now_ms, open_key, gate)
            if refusal is not None:
                raise refusal_error(refusal, phone, client)
            if escalation is not None:
                # Only this verification, whatever the index says now (reserve checks it).
                open_id = escalation.verification_id
        else:
            if gate is not None:
                gate.run()
            open_id = self.store.open_id(owner, phone_key)
        fields: dict[str, str | int] = {
            "c": client,
            "pk": phone_key,
            "pm": phone.masked,
            "len": len(test.code) if test else code_length or policy.code_length,
            "loc": choose_locale(locale, phone.region, policy.default_locale),
            # The verification keeps its cap on attempts, whatever its client's becomes.
            "ma": policy.max_attempts,
        }
        if client_ref:
            fields["ref"] = client_ref
        if owner != client:
            fields["ow"] = owner
        if mode == "keypress":
            fields["m"] = "k"
        if len(ladder) > 1 and test is None and escalation is None:
            # Its later steps call the number again: kept sealed until it ends (a step is a
            # resend: the new-record fields are not used).
            fields["ld"] = ",".join(str(step) for step in ladder)
            fields["pe"] = self.keyring.seal_phone(candidate_id, phone.e164)
            fields["pp"] = self.keyring.seal_person(candidate_id, person)
            if brand:
                # A reseller's brand is spoken by every step, not only the first call.
                fields["br"] = brand
        reservation = self.store.reserve(
            now_ms=now_ms,
            candidate_id=candidate_id,
            client=client,
            phone_key=phone_key,
            ttl_ms=policy.code_ttl_ms,
            max_sends=policy.max_sends,
            cooldown_ms=policy.resend_cooldown_ms,
            max_attempts=policy.max_attempts,
            max_failures=policy.max_failures,
            max_failures_all=policy.max_failures_all,
            slow_ms=policy.slow_ms,
            deny_ms=policy.deny_block_ms,
            deny_clients=policy.deny_clients,
            key_id=self.keyring.current_id,
            fields=fields,
            open_id=open_id,
            owner=owner,
            mode=mode,
            ladder_step=escalation.step if escalation else None,
        )
        if reservation.outcome not in ("new", "resend") and counted:
            self.velocity.refund(counted, member)
        if reservation.outcome in ("ended", "taken"):
            raise StepNotTaken(reservation.outcome)
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
        kind = "sms" if channel == "sms" else mode
        template, source = choose_template(policy.templates, client, kind, record["loc"])
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
            brand=brand or policy.brand,
            repeats=policy.call_repeats,
            minutes=-(-policy.code_ttl_ms // 60_000),
            template=template,
            template_source=source,
            channel=channel,
            send=gen,
        )
        budget = abuse.budget_counters(client)

        def may_retry(attempt: int) -> bool:
            refused = self.velocity.count(budget, f"{member}.{attempt}", self._now_ms())
            if refused is not None:
                audit("fraud_block", id=reservation.id, client=client, reason="velocity_budget")
            return refused is None

        if escalation is not None:
            self.store.mark_placing(reservation.id, gen)
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
            index_message_ms=policy.code_ttl_ms + 3_600_000 if indexed else 0,
            ladder_step=_step_of(record.get("ld"), result.provider, first),
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

    @staticmethod
    def _refuse_unless_allowed(
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
