"""Money: the price file, what each send costs (on the verification, in its events, in the
metrics and the audit line), and budgets in money reserved with the other counters before a
call, so that concurrent starts cannot overspend them."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from otpsvc.config import load_settings
from otpsvc.config.prices import parse_price_file
from otpsvc.errors import ConfigError
from otpsvc.money import MoneyBudget, parse_amount, parse_budget, show
from tests.conftest import KEY_A, KEY_B, Api, FakeClock, termii_env
from tests.fakes.receiver import Receiver
from tests.fakes.sevenio import FakeSevenio
from tests.fakes.termii import FakeTermii
from tests.test_events import SECRET_A, event_env, wait_for

EXAMPLE = Path(__file__).resolve().parent.parent / "deploy" / "examples" / "prices.toml"
PRICES = """
currency = "EUR"
[termii.voice]
default = "0.0350"
"234" = "0.0120"
"23480" = "0.0150"
[termii.sms]
default = "0.0040"
"""


@pytest.fixture
def prices(tmp_path: Path) -> Path:
    path = tmp_path / "prices.toml"
    path.write_text(PRICES)
    return path


def priced(prices: Path, **more: str) -> dict[str, str]:
    return {"OTPSVC_CURRENCY": "EUR", "OTPSVC_PRICES_FILE": str(prices), **more}


def test_amounts_are_exact_and_shown_as_decimals():
    assert parse_amount("0.0120") == 12_000
    assert parse_amount("50") == 50_000_000
    assert show(12_000) == "0.012"
    assert show(50_000_000) == "50.00"
    assert show(3 * 12_000) == "0.036"  # 3 x 0.012 in floats is 0.036000000000000004
    for bad in ("0.0000001", "-1", "1e3", "0,5", "", " "):
        with pytest.raises(ValueError, match="amount"):
            parse_amount(bad)
    assert parse_budget("50.00 per day; 1000 per month") == (
        MoneyBudget(50_000_000, "day"),
        MoneyBudget(1_000_000_000, "month"),
    )


def test_calendar_periods_end_where_a_bill_does():
    # 2026-12-31 23:30 UTC: the hour ends in 30 minutes, the day and the month too.
    now_ms = 1798759800000
    assert MoneyBudget(1, "hour").bucket(now_ms)[1] == 30 * 60_000
    assert MoneyBudget(1, "day").bucket(now_ms)[1] == 30 * 60_000
    name, left = MoneyBudget(1, "month").bucket(now_ms)
    assert (name, left) == ("m202612", 30 * 60_000)


def test_the_longest_prefix_wins_and_the_default_covers_the_rest():
    book = parse_price_file(PRICES, "EUR", problems := [])
    assert not problems
    assert book is not None
    assert book.quote("termii", "voice", "+2348031234567") == 15_000  # 23480
    assert book.quote("termii", "voice", "+2347031234567") == 12_000  # 234
    assert book.quote("termii", "voice", "+4915112345678") == 35_000  # default
    assert book.quote("termii", "sms", "+2348031234567") == 4_000
    assert book.quote("sevenio", "voice", "+2348031234567") is None
    example = parse_price_file(EXAMPLE.read_text(), "EUR", problems)
    assert not problems
    assert example is not None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[termii.voice]\ndefault = 0.02\n", 'termii.voice."default"'),  # a float, not exact
        ('[termii.voice]\ndefault = "0.02"\n"23x" = "0.01"\n', "number prefix of digits"),
        ('[termii.voice]\n"234" = "0.01"\n', "needs a default price"),
        ('[nobody.voice]\ndefault = "0.01"\n', "nobody: not a provider"),
        ('[termii.fax]\ndefault = "0.01"\n', "voice or sms"),
        ('currency = "USD"\n[termii.voice]\ndefault = "0.01"\n', "is not OTPSVC_CURRENCY"),
        ("[termii.voice\n", "not TOML"),
    ],
)
def test_a_bad_price_file_names_what_is_wrong(text: str, problem: str):
    problems: list[str] = []
    assert parse_price_file(text, "EUR", problems) is None
    assert any(problem in p and p.startswith("OTPSVC_PRICES_FILE") for p in problems), problems


def test_the_settings_refuse_money_without_prices(redis_url, prices: Path, tmp_path: Path):
    with pytest.raises(ConfigError, match="OTPSVC_BUDGET: needs OTPSVC_PRICES_FILE"):
        load_settings(termii_env(redis_url, OTPSVC_BUDGET="10 per day"))
    with pytest.raises(ConfigError, match="OTPSVC_CURRENCY: required"):
        load_settings(termii_env(redis_url, OTPSVC_PRICES_FILE=str(prices)))
    # A provider that may send must have its prices.
    with pytest.raises(ConfigError, match=r"no prices for sevenio\.voice"):
        load_settings(
            termii_env(
                redis_url,
                **priced(prices),
                OTPSVC_PROVIDERS="termii,sevenio",
                OTPSVC_SEVENIO_API_KEY="sevenio-key-0123456789",
                OTPSVC_SEVENIO_SIGNING_KEY="sevenio-signing-0123456789",
            )
        )
    settings = load_settings(termii_env(redis_url, **priced(prices), OTPSVC_BUDGET="5 per day"))
    assert settings.prices is not None
    assert settings.budget == "5 per day"


def _metric(api: Api, name: str, **labels: str) -> float:
    text = api.client.get("/metrics").get_data(as_text=True)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def test_every_send_has_its_cost(
    make_app, openapi, prices: Path, termii: FakeTermii, caplog, clock: FakeClock
):
    api = Api(make_app(**priced(prices)), KEY_A, openapi)
    spent = _metric(api, "otpsvc_spend_total", provider="termii", channel="voice", country="NG")
    caplog.set_level(logging.INFO, logger="otpsvc.audit")
    first = api.start("+2348031234567")
    assert first.status_code == 201
    assert first.get_json()["cost"] == {"amount": "0.015", "currency": "EUR"}
    vid = first.get_json()["id"]
    line = next(r.audit for r in caplog.records if r.getMessage() == "start")  # type: ignore[attr-defined]
    assert (line["cost"], line["currency"]) == ("0.015", "EUR")
    after = _metric(api, "otpsvc_spend_total", provider="termii", channel="voice", country="NG")
    assert after - spent == pytest.approx(0.015)
    # A resend costs again; the verification shows what its sends cost together.
    clock.advance(31)
    assert api.start("+2348031234567").status_code == 200
    assert api.get(vid).get_json()["cost"] == {"amount": "0.03", "currency": "EUR"}
    # Without a price file nothing says a cost.
    plain = Api(make_app(), KEY_A, openapi)
    assert "cost" not in plain.start("+2348031234599").get_json()


def test_an_event_carries_the_cost(
    make_app, openapi, prices: Path, termii: FakeTermii, receiver: Receiver, worker_for
):
    app = make_app(**priced(prices), **event_env(a=receiver))
    api = Api(app, KEY_A, openapi)
    worker_for(app)
    vid = api.start("+2347031234567").get_json()["id"]
    api.check(vid, termii.last_code())
    wait_for(lambda: any(e["type"] == "verification.approved" for e in receiver.events()))
    event = next(e for e in receiver.events() if e["type"] == "verification.approved")
    assert event["data"]["cost"] == {"amount": "0.012", "currency": "EUR"}
    assert SECRET_A  # signed as every event (tests/test_events.py)


def test_a_client_budget_refuses_the_start_that_would_overspend_it(
    make_app, openapi, prices: Path, termii: FakeTermii, tmp_path: Path
):
    clients = tmp_path / "clients.toml"
    clients.write_text('[clients.client-a]\nbudget = "0.05 per day"\n')
    app = make_app(**priced(prices), OTPSVC_CLIENTS_FILE=str(clients))
    a, b = Api(app, KEY_A, openapi), Api(app, KEY_B, openapi)
    # 0.012 each: four fit in 0.05 (0.048), the fifth would overspend.
    for i in range(4):
        assert a.start(f"+23470312345{i:02d}").status_code == 201
    refused = a.start("+2347031234599")
    assert refused.status_code == 429
    problem = refused.get_json()
    assert problem["code"] == "spend_budget"
    assert (problem["budget"], problem["currency"], problem["scope"]) == (
        "0.05 per day",
        "EUR",
        "client",
    )
    assert int(refused.headers["Retry-After"]) >= 1
    # Another client's calls go on; the gauge says how much of the budget is spent.
    assert b.start("+2347031234599").status_code == 201
    used = _metric(a, "otpsvc_client_spend_budget_used_ratio", client="client-a", period="day")
    assert used == pytest.approx(0.96)


def test_sixteen_concurrent_starts_cannot_overspend_a_budget(
    make_app, openapi, prices: Path, termii: FakeTermii
):
    """Everyone's budget of 0.10 a day at 0.012 a call: 8 calls fit (0.096); of 16 starts at
    once exactly 8 are placed, 8 refused with spend_budget."""
    termii.delay = 0.05
    app = make_app(**priced(prices, OTPSVC_BUDGET="0.10 per day"))
    api = Api(app, KEY_A, openapi)
    before = len(termii.calls)
    statuses: list[int] = []
    codes: list[str] = []
    barrier = threading.Barrier(16)

    def start(i: int) -> None:
        barrier.wait()
        answer = api.start(f"+23470312346{i:02d}")
        statuses.append(answer.status_code)
        if answer.status_code != 201:
            codes.append(answer.get_json()["code"])

    threads = [threading.Thread(target=start, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(statuses) == [201] * 8 + [429] * 8
    assert codes == ["spend_budget"] * 8
    assert len(termii.calls) - before == 8
    assert _metric(api, "otpsvc_spend_budget_used_ratio", period="day") == pytest.approx(0.96)


def test_a_refused_reservation_hands_its_money_back(
    make_app, openapi, prices: Path, termii: FakeTermii
):
    """A resend refused by its cooldown places no call: its price is not kept in the budget."""
    app = make_app(**priced(prices, OTPSVC_BUDGET="1 per day"), OTPSVC_RESEND_COOLDOWN="600")
    api = Api(app, KEY_A, openapi)
    assert api.start("+2347031234567").status_code == 201
    for _ in range(3):
        assert api.start("+2347031234567").status_code == 429
    used = _metric(api, "otpsvc_spend_budget_used_ratio", period="day")
    assert used == pytest.approx(0.012)


def test_check_config_shows_the_prices_without_detail(redis_url, prices: Path):
    from click.testing import CliRunner

    from otpsvc.cli import main

    env = termii_env(redis_url, **priced(prices, OTPSVC_BUDGET="5 per day"))
    answer = CliRunner().invoke(main, ["check-config", "--no-redis"], env=env)
    assert answer.exit_code == 0, answer.output
    assert "prices = 2 price tables" in answer.output
    assert "OTPSVC_BUDGET = 5 per day" in answer.output
    assert json.dumps  # the output is lines, not JSON


@pytest.mark.parametrize("mode", ["ok", "plain"])
def test_what_sevenio_reports_a_send_cost_is_kept_for_reconciliation(
    make_app, openapi, sevenio: FakeSevenio, tmp_path: Path, mode: str
):
    """seven.io answers a send with its price (``total_price`` in JSON, the third line of the
    plain answer): kept exactly, with the account's currency, beside the price file's quote."""
    sevenio.mode = mode
    path = tmp_path / "prices.toml"
    path.write_text('[sevenio.voice]\ndefault = "0.0500"\n')
    app = make_app(**priced(path), OTPSVC_PROVIDERS="sevenio", OTPSVC_SEVENIO_CURRENCY="EUR")
    api = Api(app, KEY_A, openapi)
    before = _metric(api, "otpsvc_reported_spend_total", provider="sevenio", currency="EUR")
    started = api.start("+4915112345678")
    assert started.status_code == 201
    shown = api.get(started.get_json()["id"]).get_json()
    assert shown["cost"] == {"amount": "0.05", "currency": "EUR"}
    assert shown["reported_cost"] == {"amount": "0.045", "currency": "EUR"}
    after = _metric(api, "otpsvc_reported_spend_total", provider="sevenio", currency="EUR")
    assert after - before == pytest.approx(0.045)
    # Termii reports no price on a send: nothing is made up.
    (tmp_path / "t.toml").write_text('[termii.voice]\ndefault = "0.0120"\n')
    termii_app = make_app(**priced(tmp_path / "t.toml"))
    assert "reported_cost" not in Api(termii_app, KEY_A, openapi).start().get_json()


def test_a_shared_money_budget_without_each_clients_own_is_warned_of(
    redis_url, prices: Path, tmp_path: Path
):
    """One client spending the budget of every client stops the others' calls: said at start-up
    and by check-config, naming the clients without a budget of their own, until each has one."""
    env = termii_env(redis_url, **priced(prices), OTPSVC_BUDGET="5 per day")
    warned = [w for w in load_settings(env).warnings if w.startswith("OTPSVC_BUDGET")]
    assert warned == [
        "OTPSVC_BUDGET: no budget of its own (`budget` in the client file) for client-a, "
        "client-b: any of them can spend the budget of every client and stop the others' calls"
    ]
    clients = tmp_path / "clients.toml"
    clients.write_text('[clients.client-a]\nbudget = "2 per day"\n')
    half = load_settings({**env, "OTPSVC_CLIENTS_FILE": str(clients)})
    assert [w for w in half.warnings if w.startswith("OTPSVC_BUDGET")] == [
        "OTPSVC_BUDGET: no budget of its own (`budget` in the client file) for client-b: any "
        "of them can spend the budget of every client and stop the others' calls"
    ]
    clients.write_text(
        '[clients.client-a]\nbudget = "2 per day"\n[clients.client-b]\nbudget = "2 per day"\n'
    )
    whole = load_settings({**env, "OTPSVC_CLIENTS_FILE": str(clients)})
    assert not [w for w in whole.warnings if w.startswith("OTPSVC_BUDGET")]
