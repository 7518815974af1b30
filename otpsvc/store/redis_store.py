"""Verification records in Redis: key names, TTLs and the Lua scripts.

Layout (every key of one phone number shares the hash tag ``{tag}``, the first two hex digits of
the number's keyed hash, so each script touches one Redis Cluster slot; see
:mod:`otpsvc.store.shards`):

- ``<prefix>:{tag}:v:<id>``: a hash, the verification record. Verification ids start with the
  first four hex digits of the number's keyed hash, so with their tag.
- ``<prefix>:{tag}:o:<client>:<phone key>``: the id of the client's open verification for the
  number, whatever its mode (one cooldown and send count per client and number).
- ``<prefix>:{tag}:d:<client>:<phone key>``: the number is blocked for this client after its owner
  pressed "it was not me" on this client's call.
- ``<prefix>:{tag}:dn:<phone key>``: the clients whose calls the owner denied, by time; denials
  through ``OTPSVC_DENY_CLIENTS`` clients block the number for every client.
- ``<prefix>:{tag}:x:<client>:<phone key>``: one client's failed checks of the number over a day,
  across its verifications; ``<prefix>:{tag}:xa:<phone key>``: every client's together.
- ``<prefix>:{tag}:sl:<phone key>``: the slow-down gate of a number over the all-clients cap.
- ``<prefix>:{tag}:ev``, ``:ex``, ``:es``: the tag's event shard (stream, expiry index,
  snapshots), written by the scripts that change a verification (see ``_events.lua``).
- ``<prefix>:msg:<provider>:<message id>``: the verification a provider's call belongs to, for
  delivery reports that name only the provider's message id.
- ``<prefix>:nonce:<provider>:<nonce>``: a webhook nonce already seen (replay protection).

Field names of the record are short on purpose (memory per pending verification is a target):
``c`` client, ``pk`` phone key, ``pm`` masked phone, ``len`` code length, ``loc`` locale, ``ref``
client reference, ``st`` status, ``a`` attempts taken, ``s`` sends, ``g`` send generation, ``ca``
created, ``ea`` expires, ``ra`` resend allowed, ``fa`` finished (ms), ``h`` argon2 verifier,
``p`` provider, ``mid`` provider message id, ``ds`` delivery status, ``m`` mode (``k`` for
keypress, ``n`` for match; absent for code), ``kg`` the send whose key press was taken, ``ke`` how
the call was answered (``c`` confirmed, ``m`` matched, ``w`` wrong digits, ``d`` denied; see
keypress.lua), ``k`` the id of the secret
the current send's callback tokens were made with, ``lk`` set once the lock-out was told.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import redis

from otpsvc.errors import StoreUnavailable
from otpsvc.store.connection import is_cluster, per_node, store_guard
from otpsvc.store.gate import Gate
from otpsvc.store.ladder import LadderSteps
from otpsvc.store.records import (
    FAILURE_WINDOW_MS,
    MODE_FIELDS,
    CheckTicket,
    EventOptions,
    LadderClaim,
    Reservation,
    script_source,
)
from otpsvc.telemetry import span

__all__ = [
    "CheckTicket",
    "EventOptions",
    "LadderClaim",
    "Reservation",
    "VerificationStore",
    "script_source",
]

log = logging.getLogger("otpsvc.store")


class VerificationStore(LadderSteps):
    """Verification records: reserved, finalized, checked, approved, canceled, and told what
    the providers report."""

    def earlier_blocks(
        self,
        phone_keys: list[str],
        *,
        client: str,
        now_ms: int,
        max_failures: int,
        deny_ms: int,
        deny_clients: int,
    ) -> Reservation:
        """A deny block or a spent failure cap made under an earlier secret (key rotation).

        Read outside the reserve script on purpose: these keys live in other slots, and they
        only decay (nothing new is written under an earlier secret's phone key but by checks of
        verifications made before the rotation). Outcome ``clear`` when none applies.
        """
        if not phone_keys:
            return Reservation("clear", "", {})
        with store_guard():
            pipe = self.redis.pipeline(transaction=False)
            for key in phone_keys:
                pipe.pttl(self.deny_key(client, key))
                pipe.get(self.failure_key(client, key))
                pipe.pttl(self.failure_key(client, key))
                pipe.zrevrangebyscore(
                    self.denials_key(key), "+inf", now_ms - deny_ms, withscores=True
                )
            answers = pipe.execute()
        for i in range(0, len(answers), 4):
            blocked_ms, failures, failures_ttl, denials = answers[i : i + 4]
            if int(blocked_ms) > 0:
                return Reservation("blocked", "", {"until": str(now_ms + int(blocked_ms))})
            if len(denials) >= deny_clients:
                until = int(denials[deny_clients - 1][1]) + deny_ms
                return Reservation("blocked_all", "", {"until": str(until)})
            if failures is not None and int(failures) >= max_failures:
                return Reservation("failures", "", {"until": str(now_ms + int(failures_ttl))})
        return Reservation("clear", "", {})

    def open_id(self, owner: str, phone_key: str) -> str | None:
        """The owner's open verification for the number, as the index says now."""
        with store_guard():
            found = self.redis.get(self.open_key(owner, phone_key))
        return str(found) if found else None

    def reserve(
        self,
        *,
        now_ms: int,
        candidate_id: str,
        client: str,
        phone_key: str,
        ttl_ms: int,
        max_sends: int,
        cooldown_ms: int,
        max_attempts: int,
        max_failures: int,
        max_failures_all: int,
        slow_ms: int,
        deny_ms: int,
        deny_clients: int,
        key_id: str,
        fields: Mapping[str, str | int],
        open_id: str | None,
        owner: str,
        mode: str = "code",
        ladder_step: int | None = None,
    ) -> Reservation:
        """Reserve a send. ``open_id`` is the client's open verification as the caller read it
        (so that the script can declare its record); when another request changed it since, the
        index is read again and the script runs again. ``key_id`` names the secret the send's
        callback tokens are made with. ``ladder_step``: this send is that escalation step of the
        open verification ``open_id``, and only that (outcome ``ended`` when it is no longer
        pending, ``taken`` when another worker took the step)."""
        pairs = [str(x) for kv in fields.items() for x in kv]
        for _ in range(3):
            with store_guard():
                raw = self._run(
                    self._reserve,
                    [
                        self.open_key(owner, phone_key),
                        self.record_key(open_id or candidate_id),
                        self.record_key(candidate_id),
                        self.deny_key(client, phone_key),
                        self.failure_key(client, phone_key),
                        self.all_failures_key(phone_key),
                        self.slow_key(phone_key),
                        self.denials_key(phone_key),
                    ],
                    [
                        now_ms,
                        candidate_id,
                        ttl_ms,
                        max_sends,
                        cooldown_ms,
                        max_attempts,
                        max_failures,
                        max_failures_all,
                        slow_ms,
                        open_id or "",
                        deny_ms,
                        deny_clients,
                        MODE_FIELDS[mode],
                        key_id,
                        "" if ladder_step is None else ladder_step,
                        *pairs,
                    ],
                )
            outcome, vid, *flat = raw
            if outcome == "retry" and ladder_step is not None:
                return Reservation("ended", str(vid), {})
            if outcome != "retry":
                return Reservation(
                    str(outcome), str(vid), dict(zip(flat[::2], flat[1::2], strict=True))
                )
            open_id = self.open_id(owner, phone_key)
        raise StoreUnavailable("the verification changed under three starts in a row")

    def finalize(
        self,
        verification_id: str,
        gen: int,
        *,
        accepted: bool,
        verifier: str,
        provider: str,
        message_id: str | None,
        delivery_status: str,
        now_ms: int,
        index_message_ms: int = 0,
        ladder_step: int | None = None,
        cost: int | None = None,
        reported: tuple[int, str] | None = None,
        would_block: str = "",
    ) -> str:
        """Record a send's outcome, and what it cost (micro-units, by the price file);
        ``would_block``: the conversion rule's suspension monitor mode let it through
        (``rule channel destination``), told by the event ``fraud.would_block``. With
        ``index_message_ms`` the provider's message id is also mapped to the verification for
        that long, in the same round trip, for delivery reports."""
        args = [
            gen,
            "accepted" if accepted else "failed",
            verifier,
            provider,
            message_id or "",
            delivery_status,
            now_ms,
            "" if ladder_step is None else ladder_step,
            "" if cost is None else cost,
            "" if reported is None else f"{reported[0]} {reported[1]}",
            would_block,
        ]
        keys, args = self._with_events(verification_id, [self.record_key(verification_id)], args)
        with store_guard():
            if not (index_message_ms and message_id and accepted):
                return str(self._run(self._finalize, keys, args))
            if is_cluster(self.redis):
                # No scripts in a cluster pipeline; the index lives on another node anyway.
                outcome = self._run(self._finalize, keys, args)
                self.redis.set(
                    self.message_key(provider, message_id), verification_id, px=index_message_ms
                )
                return str(outcome)
            with span("redis finalize", client=True, **{"db.system": "redis"}):
                pipe = self.redis.pipeline(transaction=False)
                pipe.evalsha(self._finalize.sha, len(keys), *keys, *args)
                pipe.set(
                    self.message_key(provider, message_id), verification_id, px=index_message_ms
                )
                outcome, _ = pipe.execute(raise_on_error=False)
            if isinstance(outcome, redis.exceptions.NoScriptError):
                outcome = self._run(self._finalize, keys, args)
            elif isinstance(outcome, Exception):
                raise outcome
            return str(outcome)

    def begin_check(
        self,
        verification_id: str,
        *,
        client: str,
        now_ms: int,
        max_attempts: int,
        code_length: int,
        gate: Gate | None = None,
    ) -> CheckTicket:
        """Take an attempt. A ``gate`` (the request limits) passes first, in the same round trip
        where it can: when it refuses, no attempt is taken."""
        keys, args = self._with_events(
            verification_id,
            [self.record_key(verification_id)],
            [now_ms, client, max_attempts, code_length],
        )
        with store_guard():
            answer = self._gated(gate, self._begin_check, keys, args, replicated=self.wait_ms > 0)
        outcome, verifier, gen, attempts, expires, length, *extra = answer
        # Only an attempt taken ('verify') comes with the rest.
        provider, phone_key, masked, most, step = (*extra, "", "", "", 0, "")[:5]
        return CheckTicket(
            str(outcome),
            str(verifier),
            int(gen),
            int(attempts),
            int(expires),
            int(length),
            str(provider),
            str(phone_key),
            str(masked),
            int(most),
            int(step) if str(step) else None,
        )

    def count_failure(
        self,
        verification_id: str,
        *,
        client: str,
        phone_key: str,
        now_ms: int,
        max_attempts: int,
    ) -> None:
        """A wrong code: count it against the number's daily caps (per client, all clients);
        when it took the verification's last attempt, its client is told."""
        keys, args = self._with_events(
            verification_id,
            [
                self.failure_key(client, phone_key),
                self.all_failures_key(phone_key),
                self.record_key(verification_id),
            ],
            [FAILURE_WINDOW_MS, now_ms, max_attempts],
        )
        with store_guard():
            self._run(self._failure, keys, args)

    def approve(self, verification_id: str, *, gen: int, now_ms: int) -> str:
        keys, args = self._with_events(
            verification_id, [self.record_key(verification_id)], [gen, now_ms]
        )
        with store_guard():
            return str(self._run(self._approve, keys, args))

    def cancel(self, verification_id: str, *, client: str, now_ms: int, max_attempts: int) -> str:
        keys, args = self._with_events(
            verification_id, [self.record_key(verification_id)], [now_ms, client, max_attempts]
        )
        with store_guard():
            return str(self._run(self._cancel, keys, args))

    def clients_of(self, verification_ids: list[str]) -> dict[str, str]:
        """Each verification's API client, read in one pipeline per server ('' for one that is
        gone)."""
        keys = {self.record_key(v): v for v in verification_ids}
        with store_guard():
            answers = per_node(self.redis, list(keys), lambda pipe, key: pipe.hget(key, "c"))
        return {
            keys[key]: "" if isinstance(answer, Exception) or answer is None else str(answer)
            for key, answer in answers.items()
        }

    def verification_for_message(self, provider: str, message_id: str) -> str | None:
        with store_guard():
            found = self.redis.get(self.message_key(provider, message_id))
        return str(found) if found else None

    def record_delivery(
        self,
        verification_id: str,
        *,
        message_id: str | None,
        status: str,
        now_ms: int,
        provider: str,
        gen: int | None = None,
        key_id: str = "",
    ) -> str:
        """Apply a provider's report; an applied one tells the record's client (its script
        writes ``delivery.updated``). A report about another provider's call, or with a token of
        another secret than the send's, changes nothing."""
        keys, args = self._with_events(
            verification_id,
            [self.record_key(verification_id)],
            [message_id or "", status, now_ms, "" if gen is None else gen, provider, key_id],
        )
        with store_guard():
            return str(self._run(self._delivery, keys, args))

    def record_keypress(
        self,
        verification_id: str,
        *,
        client: str,
        phone_key: str,
        key: str,
        now_ms: int,
        deny_ms: int,
        provider: str,
        message_id: str | None = None,
        gen: int | None = None,
        key_id: str = "",
        matched: bool | None = None,
        verifier: str = "",
        max_attempts: int = 0,
    ) -> str:
        """Apply a key press bound to the send by its token's secret (``key_id``) or by the
        provider's ``message_id``; see keypress.lua. In match mode, ``matched`` tells whether
        the digits keyed matched ``verifier`` (which must still be the record's)."""
        keys, args = self._with_events(
            verification_id,
            [
                self.record_key(verification_id),
                self.deny_key(client, phone_key),
                self.denials_key(phone_key),
            ],
            [
                key,
                now_ms,
                deny_ms,
                "" if gen is None else gen,
                provider,
                message_id or "",
                key_id,
                {None: "", True: "match", False: "wrong"}[matched],
                verifier,
                max_attempts,
            ],
        )
        with store_guard():
            return str(self._run(self._keypress, keys, args))

    def first_use_of_nonce(self, provider: str, nonce: str, ttl_seconds: int) -> bool:
        """True the first time a webhook nonce is seen; False for a replay."""
        with store_guard():
            key = f"{self.prefix}:nonce:{provider}:{nonce}"
            return bool(self.redis.set(key, 1, nx=True, ex=ttl_seconds))
