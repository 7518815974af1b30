"""Verification records in Redis: key names, TTLs and the Lua scripts, in one class.

Layout (every key of one phone number shares the hash tag ``{tag}``, the first four hex digits of
the number's keyed hash, so each script touches one Redis Cluster slot):

- ``<prefix>:{tag}:v:<id>``: a hash, the verification record. Verification ids start with their tag.
- ``<prefix>:{tag}:o:<client>:<phone key>``: the id of the client's open verification for the
  number (``ok:`` for keypress mode).
- ``<prefix>:{tag}:d:<phone key>``: the number is blocked after its owner pressed "it was not me".
- ``<prefix>:{tag}:x:<client>:<phone key>``: one client's failed checks of the number over a day,
  across its verifications; ``<prefix>:{tag}:xa:<phone key>``: every client's together.
- ``<prefix>:{tag}:sl:<phone key>``: the slow-down gate of a number over the all-clients cap.
- ``<prefix>:msg:<provider>:<message id>``: the verification a provider's call belongs to, for
  delivery reports that name only the provider's message id.
- ``<prefix>:nonce:<provider>:<nonce>``: a webhook nonce already seen (replay protection).

Field names of the record are short on purpose (memory per pending verification is a target):
``c`` client, ``pk`` phone key, ``pm`` masked phone, ``len`` code length, ``loc`` locale, ``ref``
client reference, ``st`` status, ``a`` attempts taken, ``s`` sends, ``g`` send generation, ``ca``
created, ``ea`` expires, ``ra`` resend allowed, ``fa`` finished (ms), ``h`` argon2 verifier,
``p`` provider, ``mid`` provider message id, ``ds`` delivery status, ``m`` mode (``k`` for
keypress; absent for code).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.retry import Retry

from otpsvc.errors import StoreUnavailable

log = logging.getLogger("otpsvc.store")

TAG_LENGTH = 4
#: How long a number's failed checks are remembered.
FAILURE_WINDOW_MS = 86_400_000


def connect(url: str, *, socket_timeout: float, connect_timeout: float) -> redis.Redis:
    """A client with bounded waits: no command waits longer than ``socket_timeout``.

    A connection error is retried once on a fresh connection (after a Redis restart the pool holds
    dead sockets); a timeout is never retried, since the command may have run.
    """
    return redis.Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        retry=Retry(NoBackoff(), retries=1, supported_errors=(redis.ConnectionError,)),
        health_check_interval=30,
        decode_responses=True,
        client_name="otpsvc",
    )


@contextmanager
def store_guard() -> Iterator[None]:
    """Every Redis failure leaves the store as :class:`StoreUnavailable` (HTTP 503)."""
    try:
        yield
    except redis.RedisError as exc:
        log.warning("redis unavailable: %s", type(exc).__name__)
        raise StoreUnavailable("the verification store did not answer") from exc


@dataclass(frozen=True)
class Reservation:
    """What reserve decided, with the verification record as it stands after that decision."""

    outcome: str
    id: str
    record: dict[str, str]


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


def _script(name: str) -> str:
    return resources.files("otpsvc.store").joinpath("scripts", f"{name}.lua").read_text()


class VerificationStore:
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.redis = client
        self.prefix = prefix
        self._reserve = client.register_script(_script("reserve"))
        self._finalize = client.register_script(_script("finalize"))
        self._begin_check = client.register_script(_script("begin_check"))
        self._approve = client.register_script(_script("approve"))
        self._cancel = client.register_script(_script("cancel"))
        self._delivery = client.register_script(_script("delivery"))
        self._keypress = client.register_script(_script("keypress"))

    # Key names -----------------------------------------------------------------------------

    @staticmethod
    def tag_of(phone_key: str) -> str:
        return phone_key[:TAG_LENGTH]

    def _record_prefix(self, tag: str) -> str:
        return f"{self.prefix}:{{{tag}}}:v:"

    def record_key(self, verification_id: str) -> str:
        return self._record_prefix(verification_id[:TAG_LENGTH]) + verification_id

    def open_key(self, client: str, phone_key: str, mode: str = "code") -> str:
        kind = "ok" if mode == "keypress" else "o"
        return f"{self.prefix}:{{{self.tag_of(phone_key)}}}:{kind}:{client}:{phone_key}"

    def deny_key(self, phone_key: str) -> str:
        return f"{self.prefix}:{{{self.tag_of(phone_key)}}}:d:{phone_key}"

    def _failure_prefix(self, tag: str) -> str:
        return f"{self.prefix}:{{{tag}}}:x:"

    def _all_failures_prefix(self, tag: str) -> str:
        return f"{self.prefix}:{{{tag}}}:xa:"

    def failure_key(self, client: str, phone_key: str) -> str:
        return f"{self._failure_prefix(self.tag_of(phone_key))}{client}:{phone_key}"

    def all_failures_key(self, phone_key: str) -> str:
        return self._all_failures_prefix(self.tag_of(phone_key)) + phone_key

    def slow_key(self, phone_key: str) -> str:
        return f"{self.prefix}:{{{self.tag_of(phone_key)}}}:sl:{phone_key}"

    def earlier_blocks(
        self, phone_keys: list[str], *, client: str, now_ms: int, max_failures: int
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
                pipe.pttl(self.deny_key(key))
                pipe.get(self.failure_key(client, key))
                pipe.pttl(self.failure_key(client, key))
            answers = pipe.execute()
        for i in range(0, len(answers), 3):
            blocked_ms, failures, failures_ttl = answers[i : i + 3]
            if int(blocked_ms) > 0:
                return Reservation("blocked", "", {"until": str(now_ms + int(blocked_ms))})
            if failures is not None and int(failures) >= max_failures:
                return Reservation("failures", "", {"until": str(now_ms + int(failures_ttl))})
        return Reservation("clear", "", {})

    def message_key(self, provider: str, message_id: str) -> str:
        return f"{self.prefix}:msg:{provider}:{message_id}"

    # Operations ----------------------------------------------------------------------------

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
        fields: Mapping[str, str | int],
        mode: str = "code",
    ) -> Reservation:
        pairs = [str(x) for kv in fields.items() for x in kv]
        with store_guard():
            raw = self._run(
                self._reserve,
                [
                    self.open_key(client, phone_key, mode),
                    self.record_key(candidate_id),
                    self.deny_key(phone_key),
                    self.failure_key(client, phone_key),
                    self.all_failures_key(phone_key),
                    self.slow_key(phone_key),
                ],
                [
                    now_ms,
                    candidate_id,
                    self._record_prefix(self.tag_of(phone_key)),
                    ttl_ms,
                    max_sends,
                    cooldown_ms,
                    max_attempts,
                    max_failures,
                    max_failures_all,
                    slow_ms,
                    *pairs,
                ],
            )
        outcome, vid, *flat = raw
        return Reservation(str(outcome), str(vid), dict(zip(flat[::2], flat[1::2], strict=True)))

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
        ]
        keys = [self.record_key(verification_id)]
        with store_guard():
            if not (index_message_ms and message_id and accepted):
                return str(self._run(self._finalize, keys, args))
            pipe = self.redis.pipeline(transaction=False)
            pipe.evalsha(self._finalize.sha, len(keys), *keys, *args)
            pipe.set(self.message_key(provider, message_id), verification_id, px=index_message_ms)
            outcome, _ = pipe.execute(raise_on_error=False)
            if isinstance(outcome, redis.exceptions.NoScriptError):
                outcome = self._run(self._finalize, keys, args)
            elif isinstance(outcome, Exception):
                raise outcome
            return str(outcome)

    def begin_check(
        self, verification_id: str, *, client: str, now_ms: int, max_attempts: int, code_length: int
    ) -> CheckTicket:
        with store_guard():
            outcome, verifier, gen, attempts, expires, length, *extra = self._run(
                self._begin_check,
                [self.record_key(verification_id)],
                [
                    now_ms,
                    client,
                    max_attempts,
                    code_length,
                    self._failure_prefix(verification_id[:TAG_LENGTH]),
                    FAILURE_WINDOW_MS,
                    self._all_failures_prefix(verification_id[:TAG_LENGTH]),
                ],
            )
        return CheckTicket(
            str(outcome),
            str(verifier),
            int(gen),
            int(attempts),
            int(expires),
            int(length),
            *(str(value) for value in extra),
        )

    def approve(self, verification_id: str, *, gen: int, now_ms: int) -> str:
        with store_guard():
            return str(
                self._run(
                    self._approve,
                    [self.record_key(verification_id)],
                    [
                        gen,
                        now_ms,
                        self._failure_prefix(verification_id[:TAG_LENGTH]),
                        self._all_failures_prefix(verification_id[:TAG_LENGTH]),
                    ],
                )
            )

    def cancel(self, verification_id: str, *, client: str, now_ms: int, max_attempts: int) -> str:
        with store_guard():
            return str(
                self._run(
                    self._cancel,
                    [self.record_key(verification_id)],
                    [now_ms, client, max_attempts],
                )
            )

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
        gen: int | None = None,
    ) -> str:
        with store_guard():
            return str(
                self._run(
                    self._delivery,
                    [self.record_key(verification_id)],
                    [message_id or "", status, now_ms, "" if gen is None else gen],
                )
            )

    def record_keypress(
        self,
        verification_id: str,
        *,
        phone_key: str,
        key: str,
        now_ms: int,
        deny_ms: int,
        gen: int | None = None,
    ) -> str:
        with store_guard():
            return str(
                self._run(
                    self._keypress,
                    [self.record_key(verification_id), self.deny_key(phone_key)],
                    [key, now_ms, deny_ms, "" if gen is None else gen],
                )
            )

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

    def eviction_policy(self) -> str | None:
        """Redis's ``maxmemory-policy``, or None when the server does not say."""
        with store_guard():
            info: dict[str, Any] = self.redis.info("memory")
        policy = info.get("maxmemory_policy")
        return str(policy) if policy is not None else None

    # Plumbing ------------------------------------------------------------------------------

    @staticmethod
    def _run(script: Script, keys: list[str], args: list[Any]) -> Any:
        return script(keys=keys, args=args)
