"""Gates: a script (the request limits) that must pass before a store script may run, sent in the
store script's own round trip wherever every key can go to one server.

On one Redis server (or a Sentinel master) the two scripts are chained into one: the gate runs
first and, when it refuses, the store script does not run at all; one round trip, one atomic step.
On Redis Cluster the gate's keys live in their own slot, so the gate takes a round trip of its
own, first. Either way the store script runs only after the gate passed.

A plain ``redis://`` URL may lead to a proxy that routes by slot: it refuses the chained script
(``CROSSSLOT``) before running any of it, and from then on every gate of that client runs on
its own, as on a cluster.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.cluster import RedisCluster
from redis.exceptions import ClusterCrossSlotError, ResponseError

from otpsvc.store.connection import store_guard
from otpsvc.telemetry import TracedScript

log = logging.getLogger("otpsvc.store")

#: The chained script. The gate's script and the store script are each wrapped in a function
#: whose parameters shadow KEYS and ARGV, and are given their own share of both: ARGV[1] is the
#: number of the gate's keys, ARGV[2] of its arguments. Returns {1, the store script's answer}
#: when the gate passed (its own answer is then {0}), {0, the gate's answer} when it refused.
CHAIN = """\
local function gate(KEYS, ARGV)
{gate}
end
local function body(KEYS, ARGV)
{body}
end
local gate_keys, gate_args = tonumber(ARGV[1]), tonumber(ARGV[2])
local k1, a1, k2, a2 = {{}}, {{}}, {{}}, {{}}
for i = 1, #KEYS do
  if i <= gate_keys then k1[#k1 + 1] = KEYS[i] else k2[#k2 + 1] = KEYS[i] end
end
for i = 3, #ARGV do
  if i <= gate_args + 2 then a1[#a1 + 1] = ARGV[i] else a2[#a2 + 1] = ARGV[i] end
end
local verdict = gate(k1, a1)
if tonumber(verdict[1]) ~= 0 then
  return {{0, verdict}}
end
return {{1, body(k2, a2)}}
"""


@dataclass(frozen=True)
class Gate:
    """A script call that must pass first. ``settle`` reads its answer: it returns when the gate
    passed (the answer's first element is 0) and raises the refusal otherwise."""

    script: TracedScript
    keys: list[str]
    args: list[Any]
    settle: Callable[[Any], None]

    def run(self) -> None:
        """The gate in a round trip of its own."""
        with store_guard():
            answer = self.script(keys=self.keys, args=self.args)
        self.settle(answer)


class Chains:
    """The chained scripts of one Redis client, each registered on its first use."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._made: dict[tuple[str, str], TracedScript] = {}
        #: False once the server refused a chained script for its keys' slots.
        self.enabled = True

    def refused_slots(self, error: object) -> bool:
        """True when ``error`` is the server refusing a chained script because its keys span
        slots (nothing of it ran); chaining is then off for good."""
        if not isinstance(error, ClusterCrossSlotError):
            return False
        if self.enabled:
            log.warning(
                "the Redis server refuses keys across slots (CROSSSLOT): request limits now "
                "take a round trip of their own; use a redis+cluster:// URL for a cluster"
            )
        self.enabled = False
        return True

    def call(
        self, gate: Gate, body: TracedScript, keys: list[str], args: list[Any]
    ) -> tuple[TracedScript, list[str], list[Any]]:
        """The chained script of ``gate`` then ``body``, with the keys and arguments of both."""
        chained = self._made.get((gate.script.sha, body.sha))
        if chained is None:
            source = CHAIN.format(gate=gate.script.text, body=body.text)
            chained = TracedScript(
                f"{gate.script.name}+{body.name}", self.client.register_script(source)
            )
            self._made[(gate.script.sha, body.sha)] = chained
        return (
            chained,
            [*gate.keys, *keys],
            [len(gate.keys), len(gate.args), *gate.args, *args],
        )

    def run(
        self,
        gate: Gate | None,
        body: TracedScript,
        keys: list[str],
        args: list[Any],
        execute: Callable[[TracedScript, list[str], list[Any]], Any],
    ) -> Any:
        """``body``'s answer, run by ``execute(script, keys, args)`` only once ``gate`` passed:
        chained with it in one script where the server allows, else after it, on its own (a
        cluster, or a server that refused keys across slots). The gate's refusal is raised by
        its ``settle``."""
        if gate is None:
            return execute(body, keys, args)
        if self.enabled and not isinstance(self.client, RedisCluster):
            try:
                passed, answer = execute(*self.call(gate, body, keys, args))
            except ResponseError as exc:
                if not self.refused_slots(exc):
                    raise
            else:
                if not int(passed):
                    gate.settle(answer)
                    raise RuntimeError(f"the gate {gate.script.name} refused without raising")
                return answer
        gate.run()
        return execute(body, keys, args)
