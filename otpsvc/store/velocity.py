"""Velocity limits and the call budget: how many calls may go where, counted in Redis.

Counters are sliding windows, one sorted set of recent calls each:
``<prefix>:{<prefix>:velocity}:<kind>:<who>:<window s>``. "5 per hour" means at most 5 calls in
any 60 minutes (fixed clock-hour windows would let twice that through across an hour's turn).
One script checks every counter of a call and counts it in all of them, or in none. A call that
is then refused for another reason (cooldown, attempts) is handed back with :meth:`refund`.
``<prefix>:{<prefix>:velocity}:kill`` is the runtime kill switch: while it exists no call is placed.
"""

from __future__ import annotations

import functools
import json
import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import limits
import redis

from otpsvc.store.connection import RedisClient, is_cluster, store_guard
from otpsvc.store.conversion import RULES
from otpsvc.store.gate import Chains, Gate
from otpsvc.telemetry import TracedScript, span

log = logging.getLogger("otpsvc.store")


@dataclass
class KillSwitchMemory:
    """What one process last saw of the kill switch and of the data's epoch."""

    epoch: str | None = None
    state: dict[str, Any] | None = None


@dataclass(frozen=True)
class Counter:
    """One limit to count a call against: ``kind`` names the limit, ``who`` what it counts."""

    kind: str
    who: str
    limit: int
    #: Seconds: the sliding window's length; for money, until the calendar period ends.
    window: int
    #: Money: the send's price (micro-units) counted against ``limit`` in this period's total.
    amount: int = 0


@dataclass(frozen=True)
class Refusal:
    """The limit that refused a call (``kill`` for the kill switch) and when it frees up.
    ``watched``: the conversion rule in monitor mode would have refused (``suspended_<rule>``),
    and the call was counted and may go."""

    kind: str
    retry_after: int
    watched: bool = False


@dataclass(frozen=True)
class RuleGates:
    """The conversion rule's gates of one send (:meth:`ConversionStore.gates`): the number's
    safe-list entry, then the suspensions in the order of ``RULES``; ``enforce`` False for
    monitor mode; ``client``, whom a suspension of every client may exempt."""

    keys: tuple[str, ...]
    enforce: bool
    client: str


@functools.cache
def windows(spec: str) -> tuple[tuple[int, int], ...]:
    """(amount, seconds) of each window of a limit string such as ``5 per hour;10 per day``;
    parsed once per string (the strings come from the settings)."""
    return tuple((item.amount, item.get_expiry()) for item in limits.parse_many(spec))


def counters(kind: str, who: str, spec: str) -> list[Counter]:
    """One counter per window of a limit string such as ``5 per hour;10 per day``."""
    return [Counter(kind, who, amount, seconds) for amount, seconds in windows(spec)]


def _clients_of(items: Sequence[Counter]) -> list[str]:
    """The API client a call is counted for (its share's counter names it), for its own kill
    switch; none for counters of every client together."""
    return list(dict.fromkeys(c.who for c in items if c.kind in ("client", "client_budget")))


def _kill_state(raw: Any) -> dict[str, Any] | None:
    """The kill switch's stored value as its ``since``, ``by`` and ``reason``; None when off."""
    if raw is None:
        return None
    try:
        state = json.loads(str(raw))
    except ValueError:
        state = None
    if not isinstance(state, dict):
        # Written by an earlier version: the time alone.
        state = {"since": int(raw) if str(raw).isdigit() else 0, "by": "", "reason": ""}
    return state


class VelocityStore:
    def __init__(self, client: RedisClient, prefix: str) -> None:
        self.redis = client
        self.tag = f"{prefix}:{{{prefix}:velocity}}"
        script = resources.files("otpsvc.store").joinpath("scripts", "windows.lua")
        self._count = TracedScript("velocity", client.register_script(script.read_text()))
        self._chains = Chains(client)
        #: What this process last saw of the kill switch and the data's epoch (refreshed at
        #: most once a second when calls are counted): a call counted after Redis lost its
        #: data while this process saw calls suspended is refused, and the switch set again.
        self.memory = KillSwitchMemory()
        self.guard_seconds = 1.0
        self._guarded_at = float("-inf")

    @property
    def kill_key(self) -> str:
        return f"{self.tag}:kill"

    def client_kill_key(self, client: str) -> str:
        """One API client's own kill switch: its calls only."""
        return f"{self.tag}:kill:client:{client}"

    def suspend(self, *, since: float, by: str, reason: str, client: str | None = None) -> None:
        """Turn the kill switch on (``client``'s own, or every client's): who did it, when and
        why are kept with it."""
        state = {"since": int(since), "by": by, "reason": reason}
        key = self.client_kill_key(client) if client else self.kill_key
        with store_guard():
            self.redis.set(key, json.dumps(state))

    def resume(self, client: str | None = None) -> bool:
        """Turn the kill switch off (``client``'s own, or every client's); False when it was
        not on."""
        key = self.client_kill_key(client) if client else self.kill_key
        with store_guard():
            return bool(self.redis.delete(key))

    def suspended_clients(self) -> dict[str, dict[str, Any]]:
        """The clients whose own kill switch is on, with its state."""
        r: Any = self.redis
        prefix = self.client_kill_key("")
        with store_guard():
            keys = [str(key) for key in r.scan_iter(match=f"{prefix}*", count=500)]
            values = r.mget(keys) if keys else []
        found = {
            key.removeprefix(prefix): _kill_state(raw)
            for key, raw in zip(keys, values, strict=True)
        }
        return {client: state for client, state in found.items() if state is not None}

    @property
    def epoch_key(self) -> str:
        return f"{self.tag}:epoch"

    def guard_kill_switch(self, remembered: KillSwitchMemory) -> None:
        """Keep a suspension across a Redis that lost its data. ``remembered`` is what this
        process last saw: the data's epoch (a marker written once, gone only with the data) and
        the kill switch. When the marker is gone while the switch was on, the switch is set
        again, with a log line: a restart must not silently lift a suspension. One round trip
        while the marker is there (both keys read in one pipeline, in the same slot)."""
        with store_guard():
            pipe = self.redis.pipeline(transaction=False)
            pipe.get(self.epoch_key)
            pipe.get(self.kill_key)
            epoch, raw_state = pipe.execute()
            if epoch is None:
                epoch = secrets.token_hex(8)
                if not self.redis.set(self.epoch_key, epoch, nx=True):
                    epoch = self.redis.get(self.epoch_key)
                lost = remembered.epoch is not None
                if lost and remembered.state is not None and self.kill_state() is None:
                    state = {**remembered.state, "restored": True}
                    self.redis.set(self.kill_key, json.dumps(state), nx=True)
                    log.warning(
                        "Redis came back without its data while calls were suspended (since "
                        "%s, by %s): the kill switch is set again",
                        state.get("since"),
                        state.get("by") or "unknown",
                    )
                raw_state = self.redis.get(self.kill_key)
        remembered.epoch = str(epoch) if epoch is not None else None
        remembered.state = _kill_state(raw_state)

    def kill_state(self) -> dict[str, Any] | None:
        """The kill switch's ``since``, ``by`` and ``reason`` while it is on, else None."""
        with store_guard():
            raw = self.redis.get(self.kill_key)
        return _kill_state(raw)

    def _key(self, counter: Counter) -> str:
        if counter.amount:
            # A period's total: ``who`` ends with the period (``all:d20429``).
            return f"{self.tag}:{counter.kind}:{counter.who}"
        return f"{self.tag}:{counter.kind}:{counter.who}:{counter.window}"

    def _call(
        self, items: Sequence[Counter], call_id: str, now_ms: int, rule: RuleGates | None = None
    ) -> tuple[list[str], list[int | str]]:
        if time.monotonic() - self._guarded_at >= self.guard_seconds:
            self._guarded_at = time.monotonic()
            self.guard_kill_switch(self.memory)
        gates = [self.kill_key, *(self.client_kill_key(c) for c in _clients_of(items))]
        gates += rule.keys if rule else ()
        keys = [*gates, *(self._key(c) for c in items)]
        spec = " ".join(
            f"{c.limit}:{c.amount} {c.window * 1000} m"
            if c.amount
            else f"{c.limit} {c.window * 1000} h"
            for c in items
        )
        args: list[int | str] = [now_ms, call_id, len(gates), spec]
        seen = self.memory
        if seen.state is not None and seen.epoch is not None:
            # Calls were suspended when this process last looked: the script refuses (and
            # suspends again) should the data have been lost since.
            keys.append(self.epoch_key)
            args += [seen.epoch, json.dumps({**seen.state, "restored": True})]
        if rule:
            args += [""] * (8 - len(args))
            args.append(f"{len(rule.keys)} {'e' if rule.enforce else 'm'} {rule.client}")
        return keys, args

    def count(self, items: Sequence[Counter], call_id: str, now_ms: int) -> Refusal | None:
        """Count a call against every counter; a reached limit refuses it and counts nothing."""
        keys, args = self._call(items, call_id, now_ms)
        with store_guard():
            return self._refusal(items, self._count(keys=keys, args=args), int(args[2]), 0)

    def count_and_read(
        self,
        items: Sequence[Counter],
        call_id: str,
        now_ms: int,
        key: str,
        gate: Gate | None = None,
        rule: RuleGates | None = None,
    ) -> tuple[Refusal | None, str | None]:
        """:meth:`count`, and read ``key`` (a string) in the same round trip; after ``gate``
        (the request limits), in that round trip too on one server: when it refuses, nothing is
        counted here. ``rule``: the conversion rule's gates of this send, read by the same
        script."""
        rules = len(rule.keys) if rule else 0
        if is_cluster(self.redis):
            # A cluster pipeline takes no scripts, and the keys live on different nodes anyway:
            # a round trip each.
            if gate is not None:
                gate.run()
            keys, args = self._call(items, call_id, now_ms, rule)
            with store_guard():
                result = self._count(keys=keys, args=args)
            refusal = self._refusal(items, result, int(args[2]), rules)
            with store_guard():
                value = self.redis.get(key)
            return refusal, (str(value) if value else None)
        read: list[Any] = []

        def count_and_get(script: TracedScript, keys: list[str], args: list[Any]) -> Any:
            pipe = self.redis.pipeline(transaction=False)
            pipe.evalsha(script.sha, len(keys), *keys, *args)
            pipe.get(key)
            result, value = pipe.execute(raise_on_error=False)
            if isinstance(value, Exception):
                raise value
            read[:] = [value]
            if isinstance(result, redis.exceptions.NoScriptError):
                return script(keys=keys, args=args)
            if isinstance(result, Exception):
                raise result
            return result

        keys, args = self._call(items, call_id, now_ms, rule)
        with store_guard(), span("redis velocity", client=True, **{"db.system": "redis"}):
            result = self._chains.run(gate, self._count, keys, args, count_and_get)
        value = read[0]
        return self._refusal(items, result, int(args[2]), rules), (str(value) if value else None)

    @staticmethod
    def _refusal(items: Sequence[Counter], result: Any, gates: int, rules: int) -> Refusal | None:
        """What the script's reply means; ``rules``: how many of the ``gates`` are the
        conversion rule's (its safe-list entry, then the suspensions of ``RULES``)."""
        index = int(result[0])

        def suspended(gate: int) -> str:
            # The rule's gates: the safe-list entry, then one suspension per rule.
            return f"suspended_{RULES[gate - (gates - rules) - 2]}"

        if index == 0:
            return Refusal(suspended(int(result[1])), 0, True) if len(result) > 1 else None
        if index == 1:
            return Refusal("kill", 60)
        if gates - rules < index <= gates:
            return Refusal(suspended(index), -(-int(result[1]) // 1000))
        if index <= gates:
            return Refusal("client_kill", 60)
        return Refusal(items[index - gates - 1].kind, -(-int(result[1]) // 1000))

    def budget_used(
        self, spec: str, now_ms: int, *, kind: str = "budget", who: str = "all"
    ) -> list[tuple[int, int, int]]:
        """(window seconds, calls in it, limit) for each window of a call budget: of every
        client together, or (``kind="client_budget"``) the client ``who``'s own."""
        budget = counters(kind, who, spec)
        with store_guard():
            pipe = self.redis.pipeline(transaction=False)
            for c in budget:
                pipe.zcount(self._key(c), now_ms - c.window * 1000, "+inf")
            used = pipe.execute()
        return [(c.window, int(n), c.limit) for c, n in zip(budget, used, strict=True)]

    def spent(self, counters: Sequence[Counter]) -> list[int]:
        """What each money counter's period has counted so far (micro-units)."""
        with store_guard():
            pipe = self.redis.pipeline(transaction=False)
            for counter in counters:
                pipe.get(self._key(counter))
            return [int(value or 0) for value in pipe.execute()]

    def refund(self, items: Sequence[Counter], call_id: str) -> None:
        """Hand back a call that was counted but not placed."""
        with store_guard():
            pipe = self.redis.pipeline(transaction=False)
            for counter in items:
                if counter.amount:
                    pipe.decrby(self._key(counter), counter.amount)
                else:
                    pipe.zrem(self._key(counter), call_id)
            pipe.execute()
