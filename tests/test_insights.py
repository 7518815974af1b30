"""The funnel: what verifications cost and how they convert, counted by the scripts that make
each change and folded by the worker, exactly once; read by a client for its own
verifications and by an operator for all."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from otpsvc.cli import main
from otpsvc.core.funnel import BadGrouping, FunnelAsk, funnel, kind_for
from otpsvc.core.ladder import LadderRunner
from otpsvc.store.rollups import (
    APPROVAL_BOUNDS,
    METRICS,
    WIDTH,
    Cell,
    Rollups,
    increments,
    pack,
)
from tests.conftest import KEY_A, KEY_B, Api, FakeClock, termii_env
from tests.fakes.sevenio import FakeSevenio
from tests.fakes.termii import FakeTermii
from tests.test_money import priced
from tests.test_webhooks import Seven

OPERATOR_KEY = "op-" + "k3Yq9ZxV7mW2pL5nR8tB4cF6hJ1dG0sA"
OPERATOR = {"Authorization": f"Bearer {OPERATOR_KEY}"}


@pytest.fixture
def prices(tmp_path: Path) -> Path:
    path = tmp_path / "prices.toml"
    path.write_text('[termii.voice]\ndefault = "0.0350"\n"234" = "0.0120"\n')
    return path


def insight_env(prices: Path, **more: str) -> dict[str, str]:
    return {**priced(prices), "OTPSVC_OPERATOR_KEYS": f"ops:{OPERATOR_KEY}", **more}


def read(api: Api, query: str = "", headers: dict[str, str] | None = None) -> Any:
    answer = api.request("GET", f"/insights/funnel{query}", headers=headers or {})
    assert answer.status_code == 200, answer.get_json()
    return answer.get_json()


def settled(api: Api, want: dict[str, int], query: str = "") -> Any:
    """The funnel once the worker has folded what ``want`` expects of its total."""
    deadline = time.monotonic() + 30
    while True:
        body = read(api, query, OPERATOR)
        if all(body["total"][k] == v for k, v in want.items()) or time.monotonic() > deadline:
            return body
        time.sleep(0.1)


def test_twenty_verifications_ten_approved(
    make_app, openapi, prices: Path, termii: FakeTermii, worker_for, clock: FakeClock
):
    """The issue's measure: 20 verifications at 0.012, 10 approved: conversion 0.5, spend
    0.24, 0.024 per approval; the times to approval in their buckets."""
    app = make_app(**insight_env(prices))
    api = Api(app, KEY_A, openapi)
    worker_for(app)
    for i in range(20):
        started = api.start(f"+2347031234{i:03d}")
        assert started.status_code == 201
        if i % 2 == 0:
            clock.advance(12)  # twelve seconds to type the code
            assert api.check(started.get_json()["id"], termii.last_code()).status_code == 200
    body = settled(api, {"verifications": 20, "approved": 10})
    total = body["total"]
    assert body["currency"] == "EUR"
    assert total["verifications"] == 20
    assert total["sends"] == 20
    assert total["approved"] == 10
    assert total["conversion"] == 0.5
    assert total["spend"] == "0.24"  # 20 x 0.012
    assert total["cost_per_approval"] == "0.024"  # 2 x 0.012
    assert total["seconds_to_approval"] == {"p50": 15, "p95": 15}
    # A client sees its own; the other client none of them.
    assert read(api)["total"]["verifications"] == 20
    assert read(Api(app, KEY_B, openapi))["total"]["verifications"] == 0


def test_grouped_by_country_provider_channel_step_client_and_prefix(
    make_app, openapi, prices: Path, termii: FakeTermii, worker_for
):
    app = make_app(**insight_env(prices))
    a, b = Api(app, KEY_A, openapi), Api(app, KEY_B, openapi)
    worker_for(app)
    for i in range(3):
        vid = a.start(f"+2348031234{i:03d}").get_json()["id"]
        if i == 0:
            a.check(vid, termii.last_code())
    b.start("+2347031234999")
    settled(a, {"verifications": 4})
    rows = read(a, "?group_by=country,provider,channel,step", OPERATOR)["rows"]
    assert [(r["country"], r["provider"], r["channel"], r["step"]) for r in rows] == [
        ("NG", "termii", "voice", "0")
    ]
    assert (rows[0]["verifications"], rows[0]["approved"]) == (4, 1)
    by_client = read(a, "?group_by=client", OPERATOR)["rows"]
    assert {r["client"]: r["verifications"] for r in by_client} == {"client-a": 3, "client-b": 1}
    prefixes = read(a, "?group_by=prefix", OPERATOR)["rows"]
    assert {r["prefix"]: r["verifications"] for r in prefixes} == {"234803": 3, "234703": 1}
    # A client grouping by client sees itself alone.
    assert [r["client"] for r in read(a, "?group_by=client")["rows"]] == ["client-a"]
    by_hour = read(a, "?group_by=hour", OPERATOR)["rows"]
    assert sum(r["verifications"] for r in by_hour) == 4
    assert by_hour[0]["hour"].endswith(":00:00.000Z")


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("?group_by=planet", "group_by"),
        ("?group_by=prefix,provider", "group_by"),
        ("?group_by=country,country", "group_by"),
        ("?from=yesterday", "from"),
        ("?to=2026-12-07T10:00:00", "to"),
        ("?from=2026-12-07T10:00:00Z&to=2026-12-07T09:00:00Z", "from"),
    ],
)
def test_a_bad_query_names_its_parameter(make_app, openapi, prices: Path, query: str, field: str):
    api = Api(make_app(**insight_env(prices)), KEY_A, openapi)
    answer = api.request("GET", f"/insights/funnel{query}", headers=OPERATOR)
    assert answer.status_code == 422
    assert list(answer.get_json()["errors"]) == [field]


def test_only_a_client_or_an_operator_key_reads_and_an_operator_key_starts_nothing(
    make_app, openapi, prices: Path
):
    api = Api(make_app(**insight_env(prices)), None, openapi)
    assert api.request("GET", "/insights/funnel").status_code == 401
    wrong = {"Authorization": "Bearer " + "x" * 40}
    assert api.request("GET", "/insights/funnel", headers=wrong).status_code == 401
    assert api.request("GET", "/insights/funnel", headers=OPERATOR).status_code == 200
    started = api.request("POST", "/otp/start", json={"phone": "+2347031234567"}, headers=OPERATOR)
    assert started.status_code == 401


def test_folding_twice_or_at_once_counts_each_outcome_once(
    make_app, openapi, prices: Path, termii: FakeTermii
):
    """Two folders racing over the same entries (two workers) count each entry once; a folder
    that read a batch and lost the race to another folds nothing of it."""
    app = make_app(**insight_env(prices))
    api = Api(app, KEY_A, openapi)
    rt = app.extensions["otpsvc"]
    folders = [Rollups(rt.redis, rt.settings.redis_prefix) for _ in range(4)]
    stop = threading.Event()

    def fold(folder: Rollups) -> None:
        while not stop.is_set():
            folder.fold()

    threads = [threading.Thread(target=fold, args=(f,), daemon=True) for f in folders]
    for thread in threads:
        thread.start()
    for i in range(40):
        vid = api.start(f"+2347031235{i:03d}").get_json()["id"]
        if i % 4 == 0:
            api.check(vid, termii.last_code())
    time.sleep(0.5)
    stop.set()
    for thread in threads:
        thread.join(10)
    folders[0].fold()
    total = read(api, "", OPERATOR)["total"]
    assert (total["verifications"], total["sends"], total["approved"]) == (40, 40, 10)
    assert total["spend"] == "0.48"
    # Nothing is left to fold: each stream holds no entry past its marker.
    assert folders[0].fold() == 0


def test_a_folder_that_lost_the_race_folds_nothing(make_app, openapi, prices: Path):
    app = make_app(**insight_env(prices))
    api = Api(app, KEY_A, openapi)
    rt = app.extensions["otpsvc"]
    api.start("+2347031234567")
    late = Rollups(rt.redis, rt.settings.redis_prefix)
    # The batch as a folder read it, before another folded the same entries.
    found = [(k, rt.redis.xrange(k)) for k in late.streams]
    key, entries = next((k, e) for k, e in found if e)
    tag = late.streams[key]
    assert late.fold() == 1
    again = late._fold_batch(tag, "0-0", entries[-1][0], entries)
    assert again == entries[-1][0]  # the marker it found, not a second count
    assert read(api, "", OPERATOR)["total"]["verifications"] == 1


def test_without_insights_nothing_is_counted(make_app, openapi, prices: Path):
    app = make_app(**insight_env(prices, OTPSVC_INSIGHTS_DAYS="0", OTPSVC_FRAUD_MODE="off"))
    api = Api(app, KEY_A, openapi)
    api.start("+2347031234567")
    rt = app.extensions["otpsvc"]
    assert sum(rt.redis.xlen(k) for k in rt.rollups.streams) == 0


def test_without_insights_the_conversion_rule_still_reads_the_outcomes(
    make_app, openapi, prices: Path
):
    """No rollups are kept, but the entries are written and the rule reads (and trims) them."""
    app = make_app(**insight_env(prices, OTPSVC_INSIGHTS_DAYS="0"))
    Api(app, KEY_A, openapi).start("+2347031234567")
    rt = app.extensions["otpsvc"]
    assert sum(rt.redis.xlen(k) for k in rt.rollups.streams) == 1
    rt.rollups.fold()
    assert sum(rt.redis.xlen(k) for k in rt.rollups.streams) == 0
    assert not rt.redis.keys("*insights}:c:*")
    assert rt.redis.hlen(rt.service.conversion.keys[1]) == 1  # the send waits for its grace


def _cell(client: str, step: str, counts: dict[str, int], approvals: list[int]) -> Cell:
    values = [counts.get(m, 0) for m in METRICS] + [0] * (WIDTH - len(METRICS))
    for seconds in approvals:
        values[len(METRICS) + next(i for i, b in enumerate(APPROVAL_BOUNDS) if seconds <= b)] += 1
    return Cell(0, f"{client}|termii|voice|{step}", pack(values))


def test_a_ladder_verification_counts_once_in_total_and_in_each_step_it_reached():
    cells = [
        _cell("a", "0", {"verifications": 10, "reached": 10, "sends": 10, "approved": 4}, [8] * 4),
        _cell("a", "1", {"reached": 6, "sends": 6, "approved": 3, "spend": 30}, [70, 80, 200]),
    ]
    whole = funnel(FunnelAsk(0, 3_600_000, (), None), cells, "EUR")
    assert whole["total"]["verifications"] == 10
    assert whole["total"]["conversion"] == 0.7
    assert whole["total"]["seconds_to_approval"] == {"p50": 10, "p95": 300}
    steps = funnel(FunnelAsk(0, 3_600_000, ("step",), None), cells, "EUR")["rows"]
    assert [(r["step"], r["verifications"], r["approved"]) for r in steps] == [
        ("0", 10, 4),
        ("1", 6, 3),
    ]
    assert steps[1]["conversion"] == 0.5
    assert steps[1]["cost_per_approval"] == "0.00001"  # 30 micro-units / 3
    assert funnel(FunnelAsk(0, 1, (), "b"), cells, None)["total"]["verifications"] == 0


def test_the_outcomes_each_add_what_they_say():
    assert increments("v", 12_000)[:6] == [1, 1, 1, 0, 0, 12_000]
    assert increments("f", 0)[:6] == [1, 1, 0, 0, 0, 0]
    assert increments("r", 40_000)[:6] == [0, 1, 1, 0, 0, 40_000]
    assert increments("s", 12_000)[:6] == [0, 0, 1, 0, 0, 12_000]
    assert increments("a", 0)[:6] == [0, 0, 0, 1, 0, 0]
    approval = increments("ok", 12_500)
    assert approval[4] == 1
    assert approval[len(METRICS) + 2] == 1  # 12.5 s: the 15 s bucket
    with pytest.raises(BadGrouping, match="prefix cannot be grouped with step"):
        kind_for(("prefix", "step"))
    assert kind_for(("prefix", "client", "day")) == "x"
    # The smallest rollup that holds the groups.
    assert kind_for(("country", "hour")) == "c"
    assert kind_for(()) == "c"
    assert kind_for(("provider", "step", "client")) == "r"
    assert kind_for(("country", "provider")) == "m"


def test_the_insights_command_prints_the_same_as_a_table(
    make_app, openapi, prices: Path, termii: FakeTermii, worker_for, redis_url: str
):
    app = make_app(**insight_env(prices))
    api = Api(app, KEY_A, openapi)
    worker_for(app)
    for i in range(4):
        vid = api.start(f"+2347031236{i:03d}").get_json()["id"]
        if i < 3:
            api.check(vid, termii.last_code())
    settled(api, {"verifications": 4, "approved": 3})
    env = {**termii_env(redis_url, **insight_env(prices)), "OTPSVC_TERMII_BASE_URL": termii.url}
    result = CliRunner().invoke(main, ["insights", "--since", "2h", "--by", "country"], env=env)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].endswith(", EUR")
    assert lines[1].split() == [
        "country", "verifications", "sends", "answered", "approved", "conversion", "spend",
        "per", "approval", "p50", "s", "p95", "s",
    ]  # fmt: skip
    assert lines[2].split()[:7] == ["NG", "4", "4", "0", "3", "0.75", "0.048"]
    assert lines[3].split()[:3] == ["total", "4", "4"]
    as_json = CliRunner().invoke(main, ["insights", "--json", "--client", "client-b"], env=env)
    assert json.loads(as_json.output)["total"]["verifications"] == 0
    bad = CliRunner().invoke(main, ["insights", "--by", "planet"], env=env)
    assert bad.exit_code == 2
    assert "unknown group 'planet'" in bad.output


def test_a_real_ladder_is_counted_by_step(
    make_app, openapi, clock: FakeClock, sevenio: FakeSevenio, termii: FakeTermii, tmp_path: Path
):
    """voice:sevenio then sms:termii, priced: the call is not answered, the SMS step is placed
    and its code approves. The total counts one verification, two sends and both prices; the
    step rows count it in each step reached and the approval at the SMS step."""
    path = tmp_path / "prices.toml"
    path.write_text(
        '[sevenio.voice]\ndefault = "0.0300"\n[termii.voice]\ndefault = "0.0350"\n'
        '[termii.sms]\ndefault = "0.0040"\n'
    )
    app = make_app(
        **insight_env(path),
        OTPSVC_PROVIDERS="sevenio,termii",
        OTPSVC_LADDER="voice:sevenio/30,sms:termii",
        OTPSVC_TERMII_SENDER="Acme",
    )
    seven = Seven(Api(app, KEY_A, openapi), clock)
    started = seven.api.start("+4915123456789").get_json()
    mid = started["delivery"]["provider_message_id"]
    seven.hook("voice_status", {"id": mid, "status": "no-answer"})
    ladder = LadderRunner(app.extensions["otpsvc"].service)
    assert ladder.run_due() == 1
    ladder.drain()
    code = re.search(r"\b[0-9]{6}\b", termii.messages[-1].json["sms"])[0]  # type: ignore[index]
    clock.advance(50)
    assert seven.api.check(started["id"], code).get_json()["valid"] is True
    app.extensions["otpsvc"].rollups.fold()
    body = read(seven.api, "?group_by=step,channel,provider", OPERATOR)
    total = body["total"]
    assert (total["verifications"], total["sends"], total["approved"]) == (1, 2, 1)
    assert total["spend"] == "0.034"  # 0.030 the call + 0.004 the SMS
    assert total["seconds_to_approval"]["p50"] == 60  # 50 s: the 60 s bucket
    assert [
        (r["step"], r["channel"], r["provider"], r["verifications"], r["approved"], r["spend"])
        for r in body["rows"]
    ] == [("0", "voice", "sevenio", 1, 0, "0.03"), ("1", "sms", "termii", 1, 1, "0.004")]
