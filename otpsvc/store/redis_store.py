"""Verification records in Redis: key names, TTLs and the Lua scripts, in one class.

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
keypress; absent for code), ``kg`` the send whose key press was taken, ``k`` the id of the secret
the current send's callback tokens were made with, ``lk`` set once the lock-out was told.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

import redis

from otpsvc.errors import StoreUnavailable
from otpsvc.store.connection import STORE_ERRORS, RedisClient, is_cluster, per_node, store_guard
from otpsvc.store.due import DueIndex, due_channel
from otpsvc.store.gate import Chains, Gate
from otpsvc.store.shards import ID_PREFIX_LENGTH, event_keys, ladder_key, tag_of, tags
from otpsvc.telemetry import TracedScript, span

log = logging.getLogger("otpsvc.store")

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
    #: ``k`` for keypress, ``''`` for code.
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

    def args(self) -> list[str | int]:
        """The ARGV tail of a script that may write an event: a fresh event id, the age bound,
        the clients."""
        wanted = "," + ",".join(sorted(self.clients)) + ","
        return [f"msg_{uuid.uuid4().hex}", self.max_age_ms, wanted]


class VerificationStore:
    def __init__(
        self,
        client: RedisClient,
        prefix: str,
        *,
        wait_ms: int = 0,
        events: EventOptions | None = None,
    ) -> None:
        """``wait_ms`` > 0: a check's attempt must reach a replica (``WAIT 1 wait_ms``) before
        the code is compared, so a failover cannot hand an attempt back. ``events``: which
        clients' verifications write events (none by default)."""
        self.redis = client
        self.prefix = prefix
        self.wait_ms = wait_ms
        #: The ladder's due index, made on the first look for due steps (workers only).
        self._due: DueIndex | None = None
        self.events = events or EventOptions()
        self._reserve = self._register(client, "reserve")
        self._finalize = self._register(client, "finalize")
        self._begin_check = self._register(client, "begin_check")
        self._approve = self._register(client, "approve")
        self._failure = self._register(client, "failure")
        self._cancel = self._register(client, "cancel")
        self._delivery = self._register(client, "delivery")
        self._keypress = self._register(client, "keypress")
        self._ladder_claim = self._register(client, "ladder_claim")
        self._ladder_stop = self._register(client, "ladder_stop")
        self._ladder_skip = self._register(client, "ladder_skip")
        self._chains = Chains(client)

    @staticmethod
    def _register(client: RedisClient, name: str) -> TracedScript:
        return TracedScript(name, client.register_script(script_source(name)))

    # Key names -----------------------------------------------------------------------------

    @staticmethod
    def tag_of(phone_key: str) -> str:
        return tag_of(phone_key)

    @staticmethod
    def id_prefix(phone_key: str) -> str:
        """What a verification id of the number starts with (its tag first)."""
        return phone_key[:ID_PREFIX_LENGTH]

    def record_key(self, verification_id: str) -> str:
        return f"{self.prefix}:{{{tag_of(verification_id)}}}:v:{verification_id}"

    def _with_events(
        self, verification_id: str, keys: list[str], args: list[Any]
    ) -> tuple[list[str], list[Any]]:
        """A script's keys and args followed by the event shard's (see ``_events.lua``)."""
        return (
            [*keys, *event_keys(self.prefix, tag_of(verification_id))],
            [*args, *self.events.args()],
        )

    def open_key(self, owner: str, phone_key: str) -> str:
        """The index of the open verification ``owner`` has for the number: the client's name, or
        behind a gateway the client's name and a keyed hash of the person
        (:meth:`Starting.owner_of <otpsvc.core.start.Starting.owner_of>`)."""
        return f"{self.prefix}:{{{self.tag_of(phone_key)}}}:o:{owner}:{phone_key}"

    def deny_key(self, client: str, phone_key: str) -> str:
        return f"{self.prefix}:{{{self.tag_of(phone_key)}}}:d:{client}:{phone_key}"

    def denials_key(self, phone_key: str) -> str:
        return f"{self.prefix}:{{{self.tag_of(phone_key)}}}:dn:{phone_key}"

    def failure_key(self, client: str, phone_key: str) -> str:
        return f"{self.prefix}:{{{self.tag_of(phone_key)}}}:x:{client}:{phone_key}"

    def all_failures_key(self, phone_key: str) -> str:
        return f"{self.prefix}:{{{self.tag_of(phone_key)}}}:xa:{phone_key}"

    def slow_key(self, phone_key: str) -> str:
        return f"{self.prefix}:{{{self.tag_of(phone_key)}}}:sl:{phone_key}"

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

    def message_key(self, provider: str, message_id: str) -> str:
        return f"{self.prefix}:msg:{provider}:{message_id}"

    # Operations ----------------------------------------------------------------------------

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
                        "k" if mode == "keypress" else "",
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
    ) -> str:
        """Record a send's outcome. With ``index_message_ms`` the provider's message id is also
        mapped to the verification for that long, in the same round trip, for delivery reports."""
        args = [
            gen,
            "accepted" if accepted else "failed",
            verifier,
            provider,
            message_id or "",
            delivery_status,
            now_ms,
            "" if ladder_step is None else ladder_step,
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

    def claim_step(self, verification_id: str, *, now_ms: int, lease_ms: int) -> LadderClaim | None:
        """A due escalation step of this verification, held for ``lease_ms``; None when none is
        due (another worker holds it, or the verification ended)."""
        keys, args = self._with_events(
            verification_id, [self.record_key(verification_id)], [verification_id, now_ms, lease_ms]
        )
        with store_guard():
            answer = self._run(self._ladder_claim, keys, args)
        if not answer:
            return None
        ladder, current, sealed, client, mode, locale, why, owner, pk, brand, person = (
            str(a) for a in answer
        )
        return LadderClaim(
            ladder, int(current), sealed, client, mode, locale, why, owner, pk, brand, person
        )

    def stop_ladder(self, verification_id: str, *, now_ms: int, why: str) -> bool:
        """End the verification's ladder, telling its client why; False when it had ended."""
        keys, args = self._with_events(
            verification_id, [self.record_key(verification_id)], [now_ms, why]
        )
        with store_guard():
            return bool(self._run(self._ladder_stop, keys, args))

    def skip_step(self, verification_id: str, *, step: int, now_ms: int) -> bool:
        """Go past a step another worker took and never finished: not placed again; the next
        one is due after its wait. False when the ladder is over."""
        keys, args = self._with_events(
            verification_id, [self.record_key(verification_id)], [step, now_ms]
        )
        with store_guard():
            return bool(self._run(self._ladder_skip, keys, args))

    def mark_placing(self, verification_id: str, gen: int) -> None:
        """An escalation step's call is about to be placed: from here on a worker that dies
        leaves the step taken (its call may have rung), never placed again."""
        with store_guard():
            self.redis.hset(self.record_key(verification_id), "lp", gen)

    def delay_step(self, verification_id: str, *, until_ms: int) -> None:
        """Make a claimed step due again at ``until_ms`` (instead of at its lease's end)."""
        with store_guard():
            key = ladder_key(self.prefix, tag_of(verification_id))
            self.redis.zadd(key, {verification_id: until_ms}, xx=True)
            self.redis.publish(due_channel(self.prefix), f"{key} {until_ms}")

    def next_step_at(self, verification_id: str) -> float | None:
        """When the verification's next escalation step is due (epoch seconds), if one is."""
        with store_guard():
            due = self.redis.zscore(
                ladder_key(self.prefix, tag_of(verification_id)), verification_id
            )
        return None if due is None else float(due) / 1000

    def due_steps(self, now_ms: int, limit: int = 50) -> list[str]:
        """Verifications with an escalation step due, across every shard (asking only the
        shards the due index says have one)."""
        if self._due is None:
            shards = [ladder_key(self.prefix, tag) for tag in tags()]
            self._due = DueIndex(self.redis, shards, due_channel(self.prefix))
        with store_guard():
            shards = self._due.due(now_ms)
            if not shards:
                return []
            answers = per_node(
                self.redis,
                shards,
                lambda pipe, key: pipe.zrangebyscore(key, "-inf", now_ms, 0, limit),
            )
        due: list[str] = []
        for answer in answers.values():
            if isinstance(answer, Exception):
                raise answer
            due += [str(vid) for vid in answer]
        return due

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
    ) -> str:
        """Apply a key press bound to the send by its token's secret (``key_id``) or by the
        provider's ``message_id``; see keypress.lua."""
        keys, args = self._with_events(
            verification_id,
            [
                self.record_key(verification_id),
                self.deny_key(client, phone_key),
                self.denials_key(phone_key),
            ],
            [key, now_ms, deny_ms, "" if gen is None else gen, provider, message_id or "", key_id],
        )
        with store_guard():
            return str(self._run(self._keypress, keys, args))

    def first_use_of_nonce(self, provider: str, nonce: str, ttl_seconds: int) -> bool:
        """True the first time a webhook nonce is seen; False for a replay."""
        with store_guard():
            key = f"{self.prefix}:nonce:{provider}:{nonce}"
            return bool(self.redis.set(key, 1, nx=True, ex=ttl_seconds))

    def load(self, verification_id: str) -> dict[str, str]:
        """The record's fields; empty when there is none."""
        with store_guard():
            return cast(dict[str, str], self.redis.hgetall(self.record_key(verification_id)))

    def ping(self) -> None:
        with store_guard():
            self.redis.ping()

    def check_writable(self) -> None:
        """A write Redis takes: a server at ``maxmemory`` under ``noeviction`` answers every read
        and refuses every write (``OOM``), and a read-only replica refuses them too; either way
        no start or check can work, so readiness must not say otherwise."""
        try:
            with store_guard():
                self.redis.set(f"{self.prefix}:ready", 1, px=10_000)
        except StoreUnavailable as exc:
            cause = exc.__cause__
            if isinstance(cause, redis.exceptions.ResponseError):
                # The server's own words ("command not allowed when used memory >
                # 'maxmemory'", "You can't write against a read only replica").
                raise StoreUnavailable(f"redis refuses writes: {str(cause)[:120]}") from cause
            raise

    def persistence(self) -> str | None:
        """How Redis keeps its data across a restart: ``aof``, ``rdb``, ``none``; None when it
        does not say (a managed Redis that refuses CONFIG, say)."""
        with store_guard():
            info: dict[str, Any] = self.redis.info("persistence")
            if int(info.get("aof_enabled", 0)):
                return "aof"
            try:
                save = self.redis.config_get("save").get("save")
            except redis.exceptions.ResponseError:
                return None
        return "rdb" if save else "none"

    def eviction_policy(self) -> str | None:
        """Redis's ``maxmemory-policy``, or None when the server does not say."""
        with store_guard():
            info: dict[str, Any] = self.redis.info("memory")
        policy = info.get("maxmemory_policy")
        return str(policy) if policy is not None else None

    # Plumbing ------------------------------------------------------------------------------

    def _run_replicated(self, script: TracedScript, keys: list[str], args: list[Any]) -> Any:
        """Run a script, then ``WAIT`` for one replica, on the one connection that wrote (WAIT
        covers only that connection's writes), in one round trip. A connected replica that does
        not acknowledge within ``wait_ms``: StoreUnavailable, before anything is compared. With
        no replica connected at all there is nothing to wait for, and the check goes on."""
        node: Any = self.redis
        if is_cluster(self.redis):
            node = self.redis.get_node_from_key(keys[0]).redis_connection  # type: ignore[union-attr]
        try:
            with span(
                f"redis {script.name}",
                client=True,
                **{"db.system": "redis", "db.operation": "WAIT"},
            ):
                return self._wait_on(node, script, keys, args)
        except STORE_ERRORS:
            if is_cluster(self.redis):
                # This path talks to the slot's node directly, past the cluster client's own
                # handling of moved slots: have it learn the slot map again for the next try.
                self.redis.nodes_manager.initialize()  # type: ignore[union-attr]
            raise

    def _wait_on(self, node: Any, script: TracedScript, keys: list[str], args: list[Any]) -> Any:
        for _ in range(2):
            pipe = node.pipeline(transaction=False)
            pipe.evalsha(script.sha, len(keys), *keys, *args)
            pipe.execute_command("WAIT", 1, self.wait_ms)
            answer, acked = pipe.execute(raise_on_error=False)
            if isinstance(answer, redis.exceptions.NoScriptError):
                node.script_load(script.text)
                continue
            if isinstance(answer, Exception):
                raise answer
            if isinstance(acked, Exception):
                raise acked
            if int(acked) < 1 and int(node.info("replication").get("connected_slaves", 0)) > 0:
                # A replica exists but did not confirm: the attempt could still be lost.
                raise StoreUnavailable("no replica acknowledged the attempt in time")
            if int(acked) < 1:
                # No replica to wait for (after a failover, until one rejoins): the attempt is
                # as safe as it can be on this master alone.
                log.warning("no replica connected to wait for; checks run on the master alone")
            return answer
        raise StoreUnavailable("the script could not be loaded")

    @staticmethod
    def _run(script: TracedScript, keys: list[str], args: list[Any]) -> Any:
        return script(keys=keys, args=args)

    def _gated(
        self,
        gate: Gate | None,
        script: TracedScript,
        keys: list[str],
        args: list[Any],
        *,
        replicated: bool = False,
    ) -> Any:
        """``script``'s answer, run only once ``gate`` passed; the gate's refusal is raised by
        its ``settle``. One round trip on one server (see :mod:`otpsvc.store.gate`); on a
        cluster, or a server that refused keys across slots, the gate goes first, on its own."""
        run = self._run_replicated if replicated else self._run
        return self._chains.run(gate, script, keys, args, run)
