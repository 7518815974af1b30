"""Starting a verification: screening, limits, the reservation, the code and the call."""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime
from typing import NoReturn

from otpsvc import metrics
from otpsvc.config import TestNumber
from otpsvc.config.model import ladder_of
from otpsvc.core import fraud
from otpsvc.core.audit import audit
from otpsvc.core.base import ServiceBase
from otpsvc.core.codes import generate_code, match_digits, new_verification_id
from otpsvc.core.draft import Draft, StartAsk, StepNotTaken
from otpsvc.core.keyring import Person
from otpsvc.core.models import StartOutcome
from otpsvc.core.refusals import refuse_unless_allowed, refuse_unless_sendable
from otpsvc.errors import (
    DeliveryFailed,
    InvalidRequest,
    OtpError,
    ProvidersBusy,
)
from otpsvc.money import SCALE, show, to_micros
from otpsvc.phones import Phone
from otpsvc.store import Reservation, VerificationStore
from otpsvc.store.gate import Gate
from otpsvc.store.records import MODE_FIELDS
from otpsvc.voice.base import CallRequest, CallResult, VoiceProvider
from otpsvc.voice.dispatch import DeliveryError, NoRoute
from otpsvc.voice.scripts import choose_locale
from otpsvc.voice.templates import choose_template

log = logging.getLogger("otpsvc.core")


def _step_of(ladder: str | None, provider: str, first: int) -> int | None:
    """The ladder step the provider that took the call stands at (from ``first`` on); None
    without a ladder."""
    if not ladder:
        return None
    steps = ladder_of(ladder)
    return next((i for i in range(first, len(steps)) if steps[i].provider == provider), first)


class Starting(ServiceBase):
    """Start a verification (or resend the client's open one) and place its call."""

    def start(self, ask: StartAsk, gate: Gate | None = None) -> StartOutcome:
        """:meth:`_start` in a slot of the worker's bulkhead, counted in
        ``otpsvc_verifications_started_total``. Without a slot within the bulkhead's wait the
        start is refused (``providers_busy``), counting only its request limits."""
        client, phone, mode = ask.client, ask.phone, ask.mode
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
                outcome = self._start(ask, gate, country)
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
        escalated = "escalated" if ask.escalation else "resent"
        result = "created" if outcome.created else escalated
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

    def _start(self, ask: StartAsk, gate: Gate | None, country: str) -> StartOutcome:
        """Open a verification and call the phone, or resend the client's open one for it; or,
        with an escalation, place that step of its ladder (:class:`StepNotTaken` when it ended,
        or another worker took the step).

        The steps, in this order: screen (no state), count (velocity and budget, with the
        request limits), reserve (in the number's own slot; a reservation that refuses hands
        the count back), send, finish. A test number (``OTPSVC_TEST_NUMBERS``) places no call
        and counts against no call limit.
        """
        draft = self._draft(ask, gate, country)
        self._screen(draft)
        self._count(draft)
        reservation = self._reserve(draft)
        if draft.test is not None:
            return self._start_test_number(ask.client, ask.phone, reservation, draft.test)
        return self._send(draft, reservation)

    def _draft(self, ask: StartAsk, gate: Gate | None, country: str) -> Draft:
        policy = self.policy_for(ask.client)
        escalation = ask.escalation
        ladder = escalation.steps if escalation else policy.ladder
        first = escalation.step if escalation else 0
        return Draft(
            ask=ask,
            gate=gate,
            country=country,
            policy=policy,
            abuse=self.abuse_for(ask.client),
            test=self._test_number(ask.phone, ask.client),
            owner=escalation.owner if escalation else self.owner_of(ask.client, ask.end_user_scope),
            person=(
                escalation.person
                if escalation
                else Person(ask.end_user_ip, self._account_key(ask.client, ask.end_user_id))
            ),
            ladder=ladder,
            first=first,
            channel=ladder[first].channel if len(ladder) > 1 else "voice",
        )

    def _screen(self, draft: Draft) -> None:
        """What may be called, by whom, and how: the client's policy, the number's screening,
        the route, and the blocks kept under earlier secrets. Refused here, the request still
        counts against its limits (over them it is a 429, as if the gate had gone first)."""
        ask, policy = draft.ask, draft.policy
        try:
            if ask.escalation is None:
                refuse_unless_allowed(policy, ask.mode, ask.code_length, ask.brand)
            if draft.test is not None:
                if ask.mode != "code":
                    raise InvalidRequest({"mode": ["a test number takes code mode only"]})
            else:
                draft.abuse.screen(ask.phone, ask.client, draft.channel)
                draft.route = self._route(draft)
            draft.now_ms = self._now_ms()
            draft.phone_key = (
                ask.escalation.phone_key
                if ask.escalation
                else self.keyring.phone_key(ask.phone.e164)
            )
            earlier = self.store.earlier_blocks(
                self.keyring.earlier_phone_keys(ask.phone.e164),
                client=ask.client,
                now_ms=draft.now_ms,
                max_failures=policy.max_failures,
                deny_ms=policy.deny_block_ms,
                deny_clients=policy.deny_clients,
            )
            refuse_unless_sendable(earlier, draft.now_ms, ask.client, ask.phone)
        except OtpError:
            if draft.gate is not None:
                draft.gate.run()
            raise

    def _route(self, draft: Draft) -> tuple[VoiceProvider, ...]:
        ask, ladder = draft.ask, draft.ladder
        try:
            if len(ladder) > 1:
                # A ladder names its providers: this step's first, the rest of its steps on the
                # same channel as failover should one refuse outright.
                names = [s.provider for s in ladder[draft.first :] if s.channel == draft.channel]
                return self.dispatcher.route_of(names, ask.mode, draft.channel)
            return self.dispatcher.route_for(
                ask.phone.country_code,
                ask.mode,
                routes=draft.policy.routes,
                default=draft.policy.providers,
            )
        except NoRoute as exc:
            raise InvalidRequest({"mode": [str(exc)]}) from exc

    def _count(self, draft: Draft) -> None:
        """Count the call against every limit and budget it falls under, with the request
        limits first in the same round trip, which reads the owner's open verification too (so
        that reserve can declare its record among its keys)."""
        ask, escalation = draft.ask, draft.ask.escalation
        draft.candidate_id = new_verification_id(VerificationStore.id_prefix(draft.phone_key))
        draft.member = secrets.token_hex(8)
        open_key = self.store.open_key(draft.owner, draft.phone_key)
        if draft.test is not None:
            if draft.gate is not None:
                draft.gate.run()
            draft.open_id = self.store.open_id(draft.owner, draft.phone_key)
            return
        draft.counted = draft.abuse.counters(
            phone=ask.phone,
            phone_key=draft.phone_key,
            client=ask.client,
            ip=draft.person.ip,
            user_key=draft.person.user_key,
            keyed=self.keyring.subject_key,
        )
        if draft.route:
            draft.quote = draft.abuse.quote(draft.route[0].name, draft.channel, ask.phone)
            draft.counted += draft.abuse.money_counters(ask.client, draft.quote, draft.now_ms)
        rule = fraud.rule_gates(
            self.conversion,
            draft,
            number_key=self.keyring.subject_key("safe", ask.phone.e164),
        )
        refusal, open_id = self.velocity.count_and_read(
            draft.counted, draft.member, draft.now_ms, open_key, draft.gate, rule
        )
        if refusal is not None:
            # Raises, unless the conversion rule in monitor mode only watched.
            draft.would_block = fraud.refusal_or_watch(refusal, draft)
        # A step: only its verification, whatever the index says now (reserve checks it).
        draft.open_id = escalation.verification_id if escalation else open_id

    def _reserve(self, draft: Draft) -> Reservation:
        """Open the verification, or take a send of the open one, in the number's own slot; a
        refusal hands the count back."""
        policy, ask = draft.policy, draft.ask
        reservation = self.store.reserve(
            now_ms=draft.now_ms,
            candidate_id=draft.candidate_id,
            client=ask.client,
            phone_key=draft.phone_key,
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
            fields=self._record_fields(draft),
            open_id=draft.open_id,
            owner=draft.owner,
            mode=ask.mode,
            ladder_step=ask.escalation.step if ask.escalation else None,
        )
        if reservation.outcome not in ("new", "resend") and draft.counted:
            self.velocity.refund(draft.counted, draft.member)
        if reservation.outcome in ("ended", "taken"):
            raise StepNotTaken(reservation.outcome)
        refuse_unless_sendable(reservation, draft.now_ms, ask.client, ask.phone)
        return reservation

    def _record_fields(self, draft: Draft) -> dict[str, str | int]:
        """The fields of a new verification's record (a resend keeps its record's)."""
        ask, policy, test = draft.ask, draft.policy, draft.test
        fields: dict[str, str | int] = {
            "c": ask.client,
            "pk": draft.phone_key,
            "pm": ask.phone.masked,
            "len": len(test.code) if test else ask.code_length or policy.code_length,
            "loc": choose_locale(ask.locale, ask.phone.region, policy.default_locale),
            # The verification keeps its cap on attempts, whatever its client's becomes.
            "ma": policy.max_attempts,
            # Country and the digits after the calling code ("NG803"; 'pm' holds the calling
            # code), for the funnel's counts by number range and the conversion rule.
            "px": draft.country + ask.phone.range_digits(draft.abuse.fraud_digits),
        }
        if ask.client_ref:
            fields["ref"] = ask.client_ref
        if draft.owner != ask.client:
            fields["ow"] = draft.owner
        if ask.mode != "code":
            fields["m"] = MODE_FIELDS[ask.mode]
        if len(draft.ladder) > 1 and test is None and ask.escalation is None:
            # Its later steps call the number again: kept sealed until it ends.
            fields["ld"] = ",".join(str(step) for step in draft.ladder)
            fields["pe"] = self.keyring.seal_phone(draft.candidate_id, ask.phone.e164)
            fields["pp"] = self.keyring.seal_person(draft.candidate_id, draft.person)
            if ask.brand:
                # A reseller's brand is spoken by every step, not only the first call.
                fields["br"] = ask.brand
        return fields

    def _send(self, draft: Draft, reservation: Reservation) -> StartOutcome:
        """Make the code and place the call through the route (each further provider request
        of a failover counts against the budgets); then finish the verification."""
        ask = draft.ask
        gen = int(reservation.record["g"])
        call, verifier = self._call_request(draft, reservation)
        abuse, budget = draft.abuse, draft.abuse.budget_counters(ask.client)

        def may_retry(attempt: int, provider: str) -> bool:
            # Each further provider request counts against the call budgets, and its price
            # against the budgets in money.
            now_ms = self._now_ms()
            price = abuse.quote(provider, draft.channel, ask.phone)
            items = [*budget, *abuse.money_counters(ask.client, price, now_ms)]
            refused = self.velocity.count(items, f"{draft.member}.{attempt}", now_ms)
            if refused is not None:
                reason = "spend_budget" if "spend" in refused.kind else "velocity_budget"
                audit("fraud_block", id=reservation.id, client=ask.client, reason=reason)
            return refused is None

        if ask.escalation is not None:
            self.store.mark_placing(reservation.id, gen)
        try:
            result = self.dispatcher.place(draft.route, call, may_retry=may_retry)
        except DeliveryError as exc:
            self._failed(ask, reservation, exc)
        return self._finish(draft, reservation, result, verifier)

    def _call_request(self, draft: Draft, reservation: Reservation) -> tuple[CallRequest, str]:
        """The call to place, and the keyed hash of its code (none for a keypress call) or of
        its match digits (none for a ladder's later call, which asks for the digits the app
        already shows: reserve kept their hash)."""
        ask, policy, record = draft.ask, draft.policy, reservation.record
        gen = int(record["g"])
        code, verifier = "", ""
        if ask.mode == "match" and ask.escalation is None:
            draft.match = match_digits()
            verifier = self.keyring.hash_code(reservation.id, draft.match)
        elif ask.mode == "code":
            numeric = not self.dispatcher.needs_numeric_code(draft.route)
            code = generate_code(int(record["len"]), leading_zero=numeric)
            verifier = self.keyring.hash_code(reservation.id, code)
        kind = "sms" if draft.channel == "sms" else ask.mode
        template, source = choose_template(policy.templates, ask.client, kind, record["loc"])
        call = CallRequest(
            verification_id=reservation.id,
            phone=ask.phone.e164,
            code=code,
            locale=record["loc"],
            mode=ask.mode,
            status_token=self.keyring.callback_token(reservation.id, gen, "status"),
            dtmf_token=self.keyring.callback_token(reservation.id, gen, "dtmf"),
            client=ask.client,
            country=draft.country,
            brand=ask.brand or policy.brand,
            repeats=policy.call_repeats,
            minutes=-(-policy.code_ttl_ms // 60_000),
            template=template,
            template_source=source,
            channel=draft.channel,
            send=gen,
            match=draft.match,
        )
        return call, verifier

    def _failed(self, ask: StartAsk, reservation: Reservation, exc: DeliveryError) -> NoReturn:
        """No provider took the call: the send is recorded as failed, and no code was issued."""
        self.store.finalize(
            reservation.id,
            int(reservation.record["g"]),
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
            client=ask.client,
            phone=ask.phone.masked,
            providers=[e.provider for e in exc.errors],
            reasons={e.provider: e.reason for e in exc.errors},
        )
        raise DeliveryFailed(
            "no provider accepted the call; no code was issued",
            verification_id=reservation.id,
        ) from exc

    def _finish(
        self, draft: Draft, reservation: Reservation, result: CallResult, verifier: str
    ) -> StartOutcome:
        """The call was taken: its code's hash, provider and message id go in the record (a
        match start's digits go back to the app only)."""
        ask, record = draft.ask, reservation.record
        gen = int(record["g"])
        indexed = self.dispatcher.providers[result.provider].reports_by_message_id
        cost = draft.abuse.quote(result.provider, draft.channel, ask.phone)
        reported = _reported(result)
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
            index_message_ms=draft.policy.code_ttl_ms + 3_600_000 if indexed else 0,
            ladder_step=_step_of(record.get("ld"), result.provider, draft.first),
            cost=cost,
            reported=reported,
            would_block=draft.would_block,
        )
        created = reservation.outcome == "new"
        if outcome != "ok":
            # Canceled, or replaced by a concurrent resend, while the call was being placed.
            log.info("send %s of %s was %s", gen, reservation.id, outcome)
            return StartOutcome(
                self.get(client=ask.client, verification_id=reservation.id), created
            )
        priced = {} if cost is None else {"cost": show(cost), "currency": draft.abuse.currency}
        if cost is not None:
            metrics.SPEND.labels(result.provider, draft.channel, draft.country).inc(cost / SCALE)
        audit(
            "start",
            id=reservation.id,
            client=ask.client,
            phone=ask.phone.masked,
            send=int(record["s"]),
            provider=result.provider,
            delivery=result.status,
            # What a provider's support asks for when a call did not arrive.
            provider_message_id=result.message_id,
            **priced,
        )
        record.update(p=result.provider, ds=result.status)
        if cost is not None:
            record["co"] = str(int(record.get("co") or 0) + cost)
        if reported is not None:
            metrics.REPORTED_SPEND.labels(result.provider, reported[1]).inc(reported[0] / SCALE)
            record.update(rp=str(int(record.get("rp") or 0) + reported[0]), rc=reported[1])
        if result.message_id:
            record["mid"] = result.message_id
        return StartOutcome(
            self._to_verification(reservation.id, record), created, draft.match or None
        )

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


def _reported(result: CallResult) -> tuple[int, str] | None:
    """What the provider said the send cost, in micro-units of its currency."""
    if result.reported_price is None or result.reported_currency is None:
        return None
    return to_micros(result.reported_price), result.reported_currency
