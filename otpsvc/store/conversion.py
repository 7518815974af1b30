"""The conversion rule's state (see docs/fraud.md): what each destination's sends converted,
the suspensions it made, and the safe list.

The rule reads the outcome entries the funnel reads (a send placed, an approval; see
:mod:`otpsvc.store.rollups`), never counting anything twice: ``otpsvc worker`` hands each batch
of a shard's entries to ``conversion.lua`` with the shard's marker, in the funnel's slot. A send
waits there until its verification is approved or the grace passes; it is then counted by the
minute it was placed, per client, channel and destination (the prefix, and the country), and a
destination whose settled sends of the window convert too rarely is suspended.

A start reads no state of its own for the rule: each suspension is mirrored into the velocity
slot as a key that expires when the suspension ends, and ``windows.lua`` checks the ones that
apply to a send among the gates it already reads (no extra round trip). The safe list holds
numbers as keyed hashes, each key expiring with its entry.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from otpsvc import metrics
from otpsvc.store.connection import RedisClient, store_guard
from otpsvc.store.records import script_source
from otpsvc.store.shards import insights_key
from otpsvc.telemetry import TracedScript

#: The most outcome entries one call of ``conversion.lua`` applies.
OPS_PER_CALL = 5000
#: The rule's names, by scope and target, in the order a start's gates take them.
RULES = metrics.FRAUD_RULES


@dataclass(frozen=True)
class RuleSettings:
    """The rule's thresholds (``OTPSVC_FRAUD_*``)."""

    grace_ms: int = 120_000
    window_ms: int = 3_600_000
    min_sends: int = 20
    min_conversion: float = 0.2
    #: How long a suspension lasts, by how many came before it (the last repeats).
    lengths_ms: tuple[int, ...] = (900_000, 3_600_000, 43_200_000)
    #: A suspension this soon after the last one ended is a repeat, and lasts longer.
    repeat_ms: int = 86_400_000


@dataclass(frozen=True)
class Suspension:
    """One destination's sends on one channel suspended, for one client or for every client
    but ``exempt`` (those whose own sends there convert)."""

    scope: str
    channel: str
    target: str
    since_ms: int
    until_ms: int
    level: int
    sends: int
    approved: int
    exempt: tuple[str, ...] = ()

    @classmethod
    def parse(cls, name: str | bytes, value: str | bytes) -> Suspension:
        if isinstance(name, bytes):
            name = name.decode()
        scope, channel, target = name.split("|", 2)
        held = json.loads(value)
        return cls(
            scope=scope,
            channel=channel,
            target=target,
            since_ms=int(held["since"]),
            until_ms=int(held["until"]),
            level=int(held["level"]),
            sends=int(held["sends"]),
            approved=int(held["approved"]),
            exempt=tuple(c for c in str(held.get("exempt") or "").split(",") if c),
        )

    @property
    def name(self) -> str:
        return f"{self.scope}|{self.channel}|{self.target}"

    @property
    def client(self) -> str | None:
        """The client it applies to; None for every client."""
        return self.scope.removeprefix("c:") if self.scope.startswith("c:") else None

    @property
    def rule(self) -> str:
        kind = "prefix" if self.target.startswith("p") else "country"
        return kind if self.client else f"{kind}_all"

    @property
    def destination(self) -> str:
        """The prefix as ``+234803``, or the country's ISO code."""
        return f"+{self.target[1:]}" if self.target.startswith("p") else self.target[1:]

    def as_dict(self, *, with_clients: bool = True) -> dict[str, Any]:
        """What ``otpsvc fraud status`` and the API show; ``with_clients`` False leaves out
        which other clients are exempt (a client's key sees no other client's name)."""
        found: dict[str, Any] = {
            "destination": self.destination,
            "channel": self.channel,
            "rule": self.rule,
            "client": self.client,
            "since_ms": self.since_ms,
            "until_ms": self.until_ms,
            "level": self.level,
            "sends": self.sends,
            "approved": self.approved,
        }
        if with_clients:
            found["exempt"] = list(self.exempt)
        return found


def target_names(country_code: int, digits: str, region: str) -> tuple[str, str]:
    """A send's two destinations as the rule names them: its prefix and its country."""
    return f"p{country_code}{digits}", f"k{region}"


def destination_target(destination: str) -> str:
    """What ``otpsvc fraud lift`` takes (``+234803`` or ``NG``) as a target name."""
    text = destination.strip()
    return f"p{text.lstrip('+')}" if text[:1] in "+0123456789" else f"k{text.upper()}"


class ConversionStore:
    """The rule's keys (in the funnel's slot), its gates (in the velocity slot) and the safe
    list, on a client that decodes replies."""

    def __init__(self, client: RedisClient, prefix: str, rule: RuleSettings) -> None:
        self.redis = client
        self.rule = rule
        self.keys = [insights_key(prefix, f"fr:{name}") for name in ("m", "v", "due", "w", "s")]
        self.gate_tag = f"{prefix}:{{{prefix}:velocity}}"
        self._apply = TracedScript(
            "conversion", client.register_script(script_source("conversion"))
        )

    @property
    def markers_key(self) -> str:
        return self.keys[0]

    def gate_key(self, name: str) -> str:
        """The mirror of suspension ``name`` (``scope|channel|target``) a start's gates read."""
        return f"{self.gate_tag}:fraud:{name}"

    def safe_key(self, number_key: str) -> str:
        """A safe number's entry (``number_key``: its keyed hash)."""
        return f"{self.gate_tag}:fraud-safe:{number_key}"

    def gates(
        self, client: str, channel: str, targets: tuple[str, str], number_key: str
    ) -> list[str]:
        """The keys a send's gates read, in the order of :data:`RULES`, after its safe entry."""
        prefix, country = targets
        return [
            self.safe_key(number_key),
            self.gate_key(f"c:{client}|{channel}|{prefix}"),
            self.gate_key(f"c:{client}|{channel}|{country}"),
            self.gate_key(f"*|{channel}|{prefix}"),
            self.gate_key(f"*|{channel}|{country}"),
        ]

    def markers(self) -> dict[str, str]:
        r: Any = self.redis
        with store_guard():
            held = r.hgetall(self.markers_key)
        return {_text(k): _text(v) for k, v in held.items()}

    def apply(
        self,
        batches: Sequence[tuple[str, str, str, Iterable[tuple[str, dict[str, str]]]]],
        now_ms: int,
    ) -> tuple[list[str], list[Suspension]]:
        """Apply each shard's batch (tag, marker read after, last entry id, its entries after
        that marker), settle the sends whose grace passed, and judge: each shard's marker
        after the call, and the suspensions made, already mirrored for the starts. Batches go
        to the script in calls of at most :data:`OPS_PER_CALL` operations (a backlog after a
        worker's outage must not hold Redis for long); every call settles and judges."""
        groups: list[list[tuple[str, str, str, list[str]]]] = [[]]
        size = 0
        for tag, after, last, entries in batches:
            ops = [op for entry in entries if (op := _op(*entry)) is not None]
            if groups[-1] and size + len(ops) > OPS_PER_CALL:
                groups.append([])
                size = 0
            groups[-1].append((tag, after, last, ops))
            size += len(ops)
        markers: list[str] = []
        found: list[Suspension] = []
        for group in groups:
            moved, made = self._call(group, now_ms)
            markers += moved
            found += made
        self._mirror(found, now_ms)
        return markers, found

    def _call(
        self, group: Sequence[tuple[str, str, str, list[str]]], now_ms: int
    ) -> tuple[list[str], list[Suspension]]:
        rule = self.rule
        args: list[str | int] = [
            now_ms,
            rule.grace_ms,
            rule.window_ms,
            rule.min_sends,
            repr(rule.min_conversion),
            ",".join(str(n) for n in rule.lengths_ms),
            rule.repeat_ms,
            rule.window_ms + rule.grace_ms + 86_400_000,
            len(group),
        ]
        ops: list[str] = []
        for index, (tag, after, last, shard_ops) in enumerate(group, start=1):
            args += [tag, after, last]
            # Each op names its batch by its place in this call.
            ops += (f"{index} {op}" for op in shard_ops)
        with store_guard():
            markers, made = self._apply(keys=self.keys, args=[*args, *ops])
        found = [Suspension.parse(made[i], made[i + 1]) for i in range(0, len(made), 2)]
        return [_text(m) for m in markers], found

    def _mirror(self, suspensions: Sequence[Suspension], now_ms: int) -> None:
        if not suspensions:
            return
        with store_guard():
            pipe = self.redis.pipeline(transaction=False)
            for s in suspensions:
                value = json.dumps({"until": s.until_ms, "exempt": "," + ",".join(s.exempt) + ","})
                # Gone a minute after it ends (the scripts compare 'until' with their clock).
                pipe.set(self.gate_key(s.name), value, px=max(1, s.until_ms - now_ms) + 60_000)
            pipe.execute()

    def suspensions(self, now_ms: int, *, active: bool = True) -> list[Suspension]:
        """The suspensions in force at ``now_ms`` (all remembered ones with ``active`` False),
        the latest first."""
        r: Any = self.redis
        with store_guard():
            held = r.hgetall(self.keys[4])
        found = [Suspension.parse(name, value) for name, value in held.items()]
        if active:
            found = [s for s in found if s.until_ms > now_ms]
        return sorted(found, key=lambda s: (-s.since_ms, s.name))

    def lift(
        self, target: str, now_ms: int, *, channel: str | None = None, client: str | None = None
    ) -> list[Suspension]:
        """End the suspensions in force of ``target`` (on ``channel``, of ``client``'s scope
        when given): each ends now (a repeat still lengthens the next) and the window's evidence
        about the destination is cleared, so it is judged afresh."""
        lifted = [
            s
            for s in self.suspensions(now_ms)
            if s.target == target
            and (channel is None or s.channel == channel)
            and (client is None or s.client == client)
        ]
        if not lifted:
            return []
        with store_guard():
            pipe = self.redis.pipeline(transaction=False)
            for s in lifted:
                # Ended now; its level stays (a repeat within the day still lengthens), its
                # evidence goes (the destination is judged on what it does from now).
                ended = {
                    "since": now_ms,
                    "until": now_ms,
                    "level": s.level,
                    "sends": 0,
                    "approved": 0,
                    "exempt": "," + ",".join(s.exempt) + ",",
                }
                pipe.hset(self.keys[4], s.name, json.dumps(ended))
                pipe.hdel(self.keys[3], f"{s.channel}|{s.target}")
            pipe.execute()
            pipe = self.redis.pipeline(transaction=False)
            for s in lifted:
                pipe.delete(self.gate_key(s.name))
            pipe.execute()
        return lifted

    def add_safe(self, number_key: str, seconds: int) -> None:
        with store_guard():
            self.redis.set(self.safe_key(number_key), "1", ex=seconds)

    def remove_safe(self, number_key: str) -> bool:
        with store_guard():
            return bool(self.redis.delete(self.safe_key(number_key)))

    def is_safe(self, number_key: str) -> int:
        """Seconds the number stays on the safe list (0: not on it)."""
        with store_guard():
            ttl = int(self.redis.ttl(self.safe_key(number_key)))
        return max(ttl, 0)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _op(entry_id: str, fields: dict[str, str]) -> str | None:
    """An outcome entry as the script's op: a send placed (``v``, ``r``, ``s``) or an approval
    (``ok``); None for the rest, for test numbers and for entries without a verification (from a
    version before the rule)."""
    kind, vid = fields.get("k"), fields.get("i")
    if not vid or kind not in ("v", "r", "s", "ok"):
        return None
    ms = fields.get("t") or entry_id.split("-")[0]
    if kind == "ok":
        return f"ok {vid} {ms}"
    client, country, prefix, provider, channel, _ = fields["d"].split("|")
    if provider == "test" or not (client and country and prefix):
        return None
    return f"s {vid} {ms} {client} {channel} {prefix} {country}"
