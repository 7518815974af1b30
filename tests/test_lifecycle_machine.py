"""A Hypothesis state machine of start / resend / check / cancel / expire against real Redis."""

from __future__ import annotations

from collections import Counter
from datetime import datetime

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.conftest import KEY_A, Api, wrong_code

PHONES = ["+2348031234500", "+2348031234501", "+4915123456789"]
MAX_ATTEMPTS = 3


def test_lifecycle_invariants_hold(make_app, openapi, termii, clock, redis_client):
    """Never two approvals, never more attempts than the cap, no approval after cancel or expiry."""
    # Cheaper argon2 for speed: the machine tests the lifecycle, not the hash cost.
    app = make_app(
        OTPSVC_MAX_CHECK_ATTEMPTS=str(MAX_ATTEMPTS),
        OTPSVC_ARGON2_MEMORY_KIB="1024",
        OTPSVC_MAX_FAILED_CHECKS_PER_NUMBER="100",
    )
    api = Api(app, KEY_A, openapi)
    steps = Counter()

    class Lifecycle(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            redis_client.flushdb()
            self.open: dict[str, str] = {}
            self.codes: dict[str, str] = {}
            self.expires: dict[str, float] = {}
            self.approvals: Counter[str] = Counter()
            self.dead: set[str] = set()

        def _remember(self, phone: str, body: dict) -> None:
            vid = body["id"]
            self.open[phone] = vid
            self.codes[vid] = termii.last_code()
            self.expires[vid] = datetime.fromisoformat(body["expires_at"]).timestamp()

        @rule(phone=st.sampled_from(PHONES))
        def start(self, phone: str) -> None:
            steps["start"] += 1
            response = api.start(phone)
            assert response.status_code in (200, 201, 429), response.get_json()
            if response.status_code in (200, 201):
                body = response.get_json()
                if response.status_code == 200:
                    assert body["id"] == self.open[phone]
                self._remember(phone, body)

        def _check(self, data: st.DataObject, right: bool) -> None:
            vid = self.open[data.draw(st.sampled_from(sorted(self.open)))]
            steps["check"] += 1
            code = self.codes[vid] if right else wrong_code(self.codes[vid])
            response = api.check(vid, code)
            assert response.status_code in (200, 404, 429)
            if response.status_code == 200 and response.get_json()["valid"]:
                assert vid not in self.dead, "approved after cancel or expiry"
                assert right
                self.approvals[vid] += 1

        @precondition(lambda self: bool(self.open))
        @rule(data=st.data())
        def check_right(self, data: st.DataObject) -> None:
            self._check(data, right=True)

        @precondition(lambda self: bool(self.open))
        @rule(data=st.data())
        def check_wrong(self, data: st.DataObject) -> None:
            self._check(data, right=False)

        @precondition(lambda self: bool(self.open))
        @rule(data=st.data())
        def cancel(self, data: st.DataObject) -> None:
            vid = self.open[data.draw(st.sampled_from(sorted(self.open)))]
            steps["cancel"] += 1
            response = api.cancel(vid)
            assert response.status_code in (200, 404, 429)
            if response.status_code == 200:
                self.dead.add(vid)

        @rule(seconds=st.sampled_from([1, 31, 121, 301]))
        def wait(self, seconds: int) -> None:
            steps["wait"] += 1
            clock.advance(seconds)
            self.dead |= {v for v, at in self.expires.items() if at <= clock()}

        @invariant()
        def at_most_one_approval(self) -> None:
            assert all(n <= 1 for n in self.approvals.values())

        @invariant()
        def attempts_never_exceed_the_cap(self) -> None:
            for key in redis_client.scan_iter("*:v:*"):
                assert int(redis_client.hget(key, "a") or 0) <= MAX_ATTEMPTS

    run_state_machine_as_test(
        Lifecycle,
        settings=settings(
            max_examples=40,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        ),
    )
    total = sum(steps.values())
    assert steps["check"] > 100
    pytest.FIGURES["hypothesis state machine"] = (  # type: ignore[attr-defined]
        f"{total} steps ({dict(steps)}) over 40 runs, invariants held after every step"
    )
