"""Races against a real Redis: threads released together by a barrier."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from tests.conftest import KEY_A, Api, wrong_code
from tests.fakes.termii import FakeTermii


def race(n: int, action: Callable[[int], Any]) -> list[Any]:
    """Run ``action(i)`` in n threads that all start at the same instant; return their results."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        results[i] = action(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_simultaneous_right_codes_approve_exactly_once(make_app, openapi, termii: FakeTermii):
    """Of 12 simultaneous checks with the right code exactly one is approved."""
    app = make_app(OTPSVC_MAX_CHECK_ATTEMPTS="10")
    vid = Api(app, KEY_A, openapi).start().get_json()["id"]
    code = termii.last_code()

    def check(_: int) -> tuple[int, Any]:
        response = Api(app, KEY_A, openapi).check(vid, code)
        return response.status_code, response.get_json()

    results = race(12, check)
    approved = [body for status, body in results if status == 200 and body["valid"]]
    assert len(approved) == 1
    assert all(status in (200, 404, 429) for status, _ in results)
    assert all(not body.get("valid") for status, body in results if status != 200)


def test_simultaneous_wrong_codes_count_exactly(
    make_app, openapi, termii: FakeTermii, redis_client
):
    """8 simultaneous wrong codes with 10 allowed: all 8 evaluated, the counter reads 8."""
    app = make_app(OTPSVC_MAX_CHECK_ATTEMPTS="10")
    vid = Api(app, KEY_A, openapi).start().get_json()["id"]
    bad = wrong_code(termii.last_code())
    results = race(8, lambda _: Api(app, KEY_A, openapi).check(vid, bad).status_code)
    assert results == [200] * 8
    record = next(k for k in redis_client.keys("*:v:*"))
    assert redis_client.hget(record, "a") == "8"
    assert Api(app, KEY_A, openapi).get(vid).get_json()["attempts_remaining"] == 2


def test_no_guess_is_evaluated_past_the_cap(make_app, openapi, termii: FakeTermii, redis_client):
    """20 simultaneous wrong codes, 5 allowed: 5 evaluated (200), 15 refused (429), counter 5."""
    app = make_app()
    vid = Api(app, KEY_A, openapi).start().get_json()["id"]
    bad = wrong_code(termii.last_code())
    results = race(20, lambda _: Api(app, KEY_A, openapi).check(vid, bad).status_code)
    assert sorted(results) == [200] * 5 + [429] * 15
    record = next(k for k in redis_client.keys("*:v:*"))
    assert redis_client.hget(record, "a") == "5"


def test_simultaneous_starts_place_one_call(make_app, openapi, termii: FakeTermii):
    """10 simultaneous starts for one number: one 201 and one call; the rest wait the cooldown."""
    app = make_app()
    results = race(10, lambda _: Api(app, KEY_A, openapi).start().status_code)
    assert sorted(results) == [201] + [429] * 9
    assert len(termii.calls) == 1
