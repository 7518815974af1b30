"""A pumping attack among legitimate traffic, on the service's own clock: the simulation that
``tests/test_fraud.py`` and ``bench/fraud.py`` run (see docs/fraud.md).

Legitimate traffic: a few number prefixes, each with starts spread over the hour, 70-90 % of
whose codes are entered 5 to 60 seconds after the start. The attack: numbers in one prefix
taken in sequence, a different 6-digit range each (so no velocity limit per number, per
6-digit prefix, per country or per client comes near), none of whose codes is ever entered.
Starts go through the app's HTTP API (a Flask test client) to a real Redis and a provider
stand-in over HTTP; the worker's fold runs every simulated step; the clock moves instead of
the test sleeping.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

LEGIT_PREFIXES = ("+234703", "+234805", "+234905")
ATTACK_PREFIX = "+234803"


@dataclass(frozen=True)
class Traffic:
    hours: float = 2.0
    #: Starts an hour to each legitimate prefix, and the share of their codes entered.
    legit_per_hour: int = 30
    entered: tuple[float, float] = (0.7, 0.9)
    legit_prefixes: tuple[str, ...] = LEGIT_PREFIXES
    #: Starts an hour of the attack, all to one prefix.
    attack_per_hour: int = 40
    attack_prefix: str = ATTACK_PREFIX
    #: Simulated seconds between two folds of the worker.
    step: int = 15
    seed: int = 7
    #: The API key the attack comes through (the legitimate traffic's when None).
    attack_key: str | None = None


@dataclass
class Outcome:
    attack_starts: int = 0
    attack_placed: int = 0
    attack_refused: int = 0
    #: The attack's sends placed before its first refusal (None: never refused).
    placed_before_refusal: int | None = None
    legit_starts: int = 0
    legit_placed: int = 0
    legit_refused: int = 0
    legit_entered: int = 0
    #: Refusals' codes seen (``prefix_suspended`` only, when the rule alone refuses).
    codes: set[str] = field(default_factory=set)


@dataclass
class Sim:
    """What the simulation drives: the app's test client, its clock (``advance``), the code a
    number was sent, and the worker's fold."""

    client: Any
    advance: Callable[[float], None]
    code_of: Callable[[str], str]
    fold: Callable[[], object]
    key: str


def attack_number(i: int, prefix: str = ATTACK_PREFIX) -> str:
    """The attack's i-th number: in sequence, one 6-digit range each (``+234803 001 0001``)."""
    return f"{prefix}{(i + 1) * 10_001:07d}"


def run(sim: Sim, traffic: Traffic) -> Outcome:
    rng = random.Random(traffic.seed)
    outcome = Outcome()
    end = traffic.hours * 3600
    due: list[tuple[float, int, str, str]] = []  # (at, order, what, number or id)
    order = 0

    def plan(at: float, what: str, data: str) -> None:
        nonlocal order
        order += 1
        heapq.heappush(due, (at, order, what, data))

    for prefix in traffic.legit_prefixes:
        gap = 3600 / traffic.legit_per_hour
        at = rng.uniform(0, gap)
        while at < end:
            plan(at, "legit", f"{prefix}{rng.randrange(10**6, 10**7):07d}")
            at += rng.expovariate(1 / gap)
    gap, i = 3600 / traffic.attack_per_hour, 0
    while i * gap < end:
        plan(i * gap + 1, "attack", attack_number(i, traffic.attack_prefix))
        i += 1
    entered = rng.uniform(*traffic.entered)
    now = 0.0
    while now < end:
        step_end = now + traffic.step
        while due and due[0][0] < step_end:
            at, _, what, data = heapq.heappop(due)
            sim.advance(at - now)
            now = at
            if what == "check":
                vid, number = data.split(" ")
                answer = _post(sim, "/otp/check", {"id": vid, "code": sim.code_of(number)})
                if answer.status_code == 200 and answer.get_json().get("valid"):
                    outcome.legit_entered += 1
                continue
            key = traffic.attack_key if what == "attack" and traffic.attack_key else sim.key
            answer = _post(sim, "/otp/start", {"phone": data}, key)
            placed = answer.status_code == 201
            if what == "legit":
                outcome.legit_starts += 1
                outcome.legit_placed += placed
                if not placed:
                    outcome.legit_refused += 1
                    outcome.codes.add(answer.get_json()["code"])
                elif rng.random() < entered:
                    plan(now + rng.uniform(5, 60), "check", f"{answer.get_json()['id']} {data}")
            else:
                outcome.attack_starts += 1
                outcome.attack_placed += placed
                if not placed:
                    outcome.codes.add(answer.get_json()["code"])
                    if outcome.placed_before_refusal is None:
                        outcome.placed_before_refusal = outcome.attack_placed
                    outcome.attack_refused += 1
        sim.advance(step_end - now)
        now = step_end
        sim.fold()
    return outcome


def _post(sim: Sim, path: str, body: dict[str, Any], key: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {key or sim.key}"}
    return sim.client.post(path, json=body, headers=headers)
