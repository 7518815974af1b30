"""The conversion rule against a pumping attack: ``.venv/bin/python bench/fraud.py`` (about 4
minutes; ``--hours`` shortens it).

The simulation of ``bench/pumping.py`` (also run by ``tests/test_fraud.py``): legitimate traffic
to three prefixes (30 starts an hour each, 70-90 % of codes entered within a minute) and an
attack of 40 starts an hour to one prefix (a new 6-digit range each, under every shipped volume
limit; nothing entered), through the app's API on the service's clock, with a bundled
redis-server and the Termii stand-in of ``bench/bench.py`` answering after 50 ms. Run once for
voice and once for SMS in enforce mode, and once for voice in monitor mode; for each, what the
attack's sends cost by the price file with the rule and what they would have cost without it.
"""

from __future__ import annotations

import argparse
import collections
import random
import sys
import tempfile
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ladder import KEY  # bench/ladder.py
from ladder import env as ladder_env
from pumping import Sim, Traffic, run  # bench/pumping.py

from bench import TermiiStandIn  # bench/bench.py, beside this file
from otpsvc.app import create_app
from otpsvc.config.model import Settings
from otpsvc.dev.redis_server import RedisServer

PRICES = """\
[termii.voice]
default = "0.0350"
"234" = "0.0120"

[termii.sms]
default = "0.0500"
"234" = "0.0250"
"""


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def one_run(redis_url: str, provider_url: str, prices: str, channel: str, mode: str, hours: float):  # type: ignore[no-untyped-def]
    clock = Clock()
    env = ladder_env(
        redis_url,
        provider_url,
        OTPSVC_TERMII_SENDER="Acme",
        OTPSVC_CURRENCY="EUR",
        OTPSVC_PRICES_FILE=prices,
        OTPSVC_FRAUD_MODE=mode,
        # The volume limits that count numbers, prefixes and countries as shipped: the attack
        # stays under them (those per address and per request are set out of the way: an
        # attacker rotates addresses).
        OTPSVC_VELOCITY_PHONE=Settings.velocity_phone,
        OTPSVC_VELOCITY_PREFIX=Settings.velocity_prefix,
        OTPSVC_VELOCITY_COUNTRY=Settings.velocity_country,
        OTPSVC_VELOCITY_CLIENT=Settings.velocity_client,
        OTPSVC_VELOCITY_PHONE_ALL=Settings.velocity_phone_all,
        OTPSVC_VELOCITY_PREFIX_ALL=Settings.velocity_prefix_all,
        OTPSVC_VELOCITY_COUNTRY_ALL=Settings.velocity_country_all,
        OTPSVC_CALL_BUDGET=Settings.call_budget,
    )
    if channel == "sms":
        env["OTPSVC_LADDER"] = "sms:termii/250,voice:termii"
    app = create_app(env, clock=clock)
    runtime = app.extensions["otpsvc"]
    runtime.redis.flushdb()
    sim = Sim(
        app.test_client(),
        clock.advance,
        lambda number: TermiiStandIn.codes[number.lstrip("+")],
        runtime.rollups.fold,
        KEY,
    )
    began = time.monotonic()
    outcome = run(sim, Traffic(hours=hours))
    took = time.monotonic() - began
    judged = runtime.service.conversion.suspensions(int(clock() * 1000), active=False)
    runtime.dispatcher.close()
    return outcome, judged, took


def false_suspensions(min_sends: int, share: float, conversion: float, per_hour: float) -> float:
    """The share of a legitimate prefix's days with at least one suspension, by Monte Carlo:
    sends at ``per_hour`` (Poisson), each entered with ``conversion``; the rule judged after
    every send over the last hour's sends, as the worker does."""
    rng = random.Random(1)
    days, suspended = 2000, 0
    for _ in range(days):
        window: collections.deque[tuple[float, bool]] = collections.deque()
        entered, t = 0, 0.0
        while True:
            t += rng.expovariate(per_hour / 3600)
            if t > 86400:
                break
            hit = rng.random() < conversion
            window.append((t, hit))
            entered += hit
            while window[0][0] <= t - 3600:
                entered -= window.popleft()[1]
            if len(window) >= min_sends and entered < share * len(window):
                suspended += 1
                break
    return suspended / days


def defaults() -> None:
    """How the defaults were chosen: false suspensions of legitimate prefixes against how many
    sends an attack gets before its first suspension (MIN_SENDS, and what the grace lets
    through at 40 an hour: about 1)."""
    print("false suspensions per prefix-day (legitimate traffic, 60 sends/h) for MIN_SENDS x")
    print("MIN_CONVERSION, by the legitimate conversion; attack sends before its suspension")
    print("min_sends min_conversion  conv 0.3  conv 0.4  conv 0.5  conv 0.7  attack sends")
    for min_sends in (10, 20, 40):
        for share in (0.1, 0.2, 0.3):
            cells = [false_suspensions(min_sends, share, p, 60) for p in (0.3, 0.4, 0.5, 0.7)]
            figures = "  ".join(f"{c:8.2%}" for c in cells)
            print(f"{min_sends:>9} {share:>14}  {figures}  {min_sends + 1:>12}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hours", type=float, default=6.0, help="Simulated hours per run.")
    parser.add_argument(
        "--defaults", action="store_true", help="Only the Monte Carlo that chose the defaults."
    )
    given = parser.parse_args()
    if given.defaults:
        defaults()
        return
    hours = given.hours
    TermiiStandIn.latency = staticmethod(lambda: 0.05)
    server = ThreadingHTTPServer(("127.0.0.1", 0), TermiiStandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    provider = f"http://127.0.0.1:{server.server_address[1]}"
    price = {"voice": 0.012, "sms": 0.025}
    with RedisServer() as redis_server, tempfile.TemporaryDirectory() as tmp:
        prices = Path(tmp) / "prices.toml"
        prices.write_text(PRICES)
        print(f"{hours:g} simulated hours; attack 40 starts/h to +234803, legit 3 x 30/h")
        print(
            "channel mode     attack placed/starts  before 1st refusal  legit refused  "
            "suspensions (rule, level)  attack cost: without rule / with  saved  took"
        )
        for channel, mode in (("voice", "enforce"), ("sms", "enforce"), ("voice", "monitor")):
            outcome, judged, took = one_run(
                redis_server.url, provider, str(prices), channel, mode, hours
            )
            without = outcome.attack_starts * price[channel]
            with_rule = outcome.attack_placed * price[channel]
            levels: Any = sorted({(s.destination, s.rule, s.level) for s in judged})
            print(
                f"{channel:7} {mode:8} {outcome.attack_placed:>6}/{outcome.attack_starts:<6}"
                f"         {outcome.placed_before_refusal!s:>6}          "
                f"{outcome.legit_refused}/{outcome.legit_starts:<8} {levels}  "
                f"EUR {without:.2f} / {with_rule:.2f}  {1 - with_rule / without:.0%}  {took:.0f} s"
            )
    server.shutdown()


if __name__ == "__main__":
    main()
