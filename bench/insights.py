"""The funnel's rollups for a realistic month: Redis memory, and the time to answer a 30-day
query grouped by country.

The month: 1 million verifications a day over 50 countries (Zipf-weighted), each country routed
to 2 of 4 providers (80 % the first), 10 clients (Zipf), calls with a third escalating to an
SMS step, 100 number prefixes a country (Zipf), 60 % approved. The rollups hold one field per
hour (or day) and set of dimensions seen, so what they cost depends on how many distinct sets a
day sees, not on how each was counted: each hour's counts are drawn (a multinomial over every
set of dimensions) and written through the worker's own fold script, the last 48 hours by hour
and by day, the 33 days before by day, as the worker leaves them. The queries are timed as the
API runs them (``read_funnel``: reading the rollups and summing them, without HTTP).

    python bench/insights.py            # about a minute; a fresh redis-server of its own
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Iterator
from itertools import product
from typing import Any

import numpy as np

from otpsvc.core.funnel import FunnelAsk, read_funnel
from otpsvc.dev.redis_server import RedisServer
from otpsvc.store.connection import connect
from otpsvc.store.rollups import DAY_MS, HOUR_MS, WIDTH, Rollups, pack

PROVIDERS = ("termii", "sevenio", "cequens", "alphasms")
CLIENTS = tuple(f"app-{n}" for n in range(10))
#: Shares of the verifications: the first call approved, escalated to the SMS step, ...
APPROVED = 0.6
ESCALATED = 1 / 3
PRICE = {"voice": 12_000, "sms": 40_000}


def zipf(n: int, s: float = 1.1) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** s
    return np.asarray(weights / weights.sum())


def dimension_sets(countries: int, prefixes: int) -> tuple[list[tuple[str, ...]], np.ndarray]:
    """Every set of dimensions of a first call, with its share of the verifications."""
    sets, shares = [], []
    country_share, client_share, prefix_share = zipf(countries), zipf(len(CLIENTS)), zipf(prefixes)
    for client, country in product(range(len(CLIENTS)), range(countries)):
        first = PROVIDERS[country % 4]
        second = PROVIDERS[(country + 1) % 4]
        for provider, route_share in ((first, 0.8), (second, 0.2)):
            for p in range(prefixes):
                code = f"{(country * 7) % 900 + 20}{p:03d}"
                sets.append((CLIENTS[client], f"C{country:02d}", code, provider))
                shares.append(
                    client_share[client] * country_share[country] * route_share * prefix_share[p]
                )
    weights = np.asarray(shares)
    return sets, weights / weights.sum()


def hour_cells(
    sets: list[tuple[str, ...]], shares: np.ndarray, per_hour: int, rng: np.random.Generator
) -> dict[tuple[str, str], list[int]]:
    """One hour's counts, by rollup kind and field, as the worker would fold them."""
    counts = rng.multinomial(per_hour, shares)
    cells: dict[tuple[str, str], list[int]] = {}
    for index in np.flatnonzero(counts):
        client, country, prefix, provider = sets[index]
        n = int(counts[index])
        approved_first = int(n * APPROVED * (1 - ESCALATED))
        escalated = int(n * ESCALATED)
        approved_sms = int(escalated * 0.5)
        voice = _counts(n, n, n, approved_first, n * PRICE["voice"])
        sms = _counts(0, escalated, escalated, approved_sms, escalated * PRICE["sms"])
        both = [a + b for a, b in zip(voice, sms, strict=True)]
        for key, values in (
            (("c", f"{client}|{country}"), both),
            (("r", f"{client}|{provider}|voice|0"), voice),
            (("r", f"{client}|sevenio|sms|1"), sms),
            (("m", f"{client}|{country}|{provider}|voice|0"), voice),
            (("m", f"{client}|{country}|sevenio|sms|1"), sms),
            (("x", f"{client}|{country}|{prefix}"), both),
        ):
            if values[1] == 0:
                continue
            cell = cells.setdefault(key, [0] * WIDTH)
            for i, v in enumerate(values):
                cell[i] += v
    return cells


def _counts(begun: int, reached: int, sends: int, approved: int, spend: int) -> list[int]:
    counts = [begun, reached, sends, 0, approved, spend] + [0] * (WIDTH - 6)
    counts[6 + 2], counts[6 + 5] = approved // 2, approved - approved // 2  # 15 s and 45 s
    return counts


def write(rollups: Rollups, span: str, at_ms: int, target: dict[str, dict[str, list[int]]]) -> None:
    """Write the cells of the hour or day at ``at_ms`` through the fold script, in batches (its
    marker advanced as a worker's)."""
    r: Any = rollups.redis
    items = [
        (key, field, counts) for key, fields in target.items() for field, counts in fields.items()
    ]
    for start in range(0, len(items), 2000):
        batch = items[start : start + 2000]
        keys = sorted({key for key, _, _ in batch})
        index = {key: i + 2 for i, key in enumerate(keys)}
        marker = r.hget(rollups.markers, "bench") or "0-0"
        after = f"{int(marker.split('-')[0]) + 1}-0"
        args: list[Any] = [
            "bench",
            marker,
            after,
            rollups.days_ms,
            *(rollups.expiry(span, at_ms) for _ in keys),
        ]
        for key, field, counts in batch:
            args += [index[key], field, pack(counts)]
        rollups._fold(keys=[rollups.markers, *keys], args=args)


def month(
    rollups: Rollups, now_ms: int, per_day: int, days: int, countries: int, prefixes: int
) -> Iterator[str]:
    rng = np.random.default_rng(7)
    sets, shares = dimension_sets(countries, prefixes)
    per_hour = per_day // 24
    today = now_ms - now_ms % DAY_MS
    for day in range(days):
        day_start = today - (days - 1 - day) * DAY_MS
        by_day: dict[str, dict[str, list[int]]] = {}
        for hour in range(24):
            by_hour: dict[str, dict[str, list[int]]] = {}
            at = day_start + hour * HOUR_MS
            if at > now_ms:
                break
            for (kind, field), counts in hour_cells(sets, shares, per_hour, rng).items():
                day_cell = by_day.setdefault(rollups.rollup_key(kind, "d", at), {}).setdefault(
                    field, [0] * WIDTH
                )
                for i, v in enumerate(counts):
                    day_cell[i] += v
                if at >= now_ms - 48 * HOUR_MS:
                    by_hour.setdefault(rollups.rollup_key(kind, "h", at), {})[field] = counts
            write(rollups, "h", at, by_hour)
        write(rollups, "d", day_start, by_day)
        yield f"day {day + 1}/{days}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-day", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=35)
    parser.add_argument("--countries", type=int, default=50)
    parser.add_argument("--prefixes", type=int, default=100)
    args = parser.parse_args()
    with RedisServer() as server:
        client = connect(server.url, socket_timeout=30.0, connect_timeout=5.0)
        rollups = Rollups(client, "bench", days=args.days)
        before = int(client.info("memory")["used_memory"])
        now = int(time.time() * 1000)
        began = time.perf_counter()
        for _ in month(rollups, now, args.per_day, args.days, args.countries, args.prefixes):
            pass
        written = time.perf_counter() - began
        used = int(client.info("memory")["used_memory"]) - before
        keys = client.dbsize()
        fields = {
            kind: sum(client.hlen(k) for k in client.scan_iter(match=f"bench:*:{kind}:d*"))
            for kind in ("c", "r", "m", "x")
        }
        timings = {}
        for label, group_by in (
            ("30 days by country", ("country",)),
            ("30 days by provider, channel and step", ("provider", "channel", "step")),
            ("30 days by country and provider", ("country", "provider")),
            ("30 days by prefix", ("prefix",)),
            ("24 hours by hour", ("hour",)),
            ("24 hours by prefix", ("prefix",)),
        ):
            span_days = 1 if label.startswith("24 hours") else 30
            runs = []
            for _ in range(7):
                t0 = time.perf_counter()
                ask = FunnelAsk(now - span_days * DAY_MS, now, group_by, None)
                body = read_funnel(rollups, ask, now, "EUR")
                runs.append(time.perf_counter() - t0)
            timings[label] = (
                statistics.median(runs) * 1000,
                len(body["rows"]),
                body["total"]["verifications"],
            )
        print(
            f"month written through fold.lua in {written:.0f} s: "
            f"{args.per_day:,} verifications a day, "
            f"{args.days} days, {args.countries} countries, 4 providers, 2 channels, 10 clients, "
            f"{args.prefixes} prefixes a country"
        )
        daily = ", ".join(f"{kind} {n:,}" for kind, n in fields.items())
        print(f"redis: {used / 2**20:.1f} MiB in {keys} keys; fields of the daily rollups: {daily}")
        for label, (ms, rows, total) in timings.items():
            print(f"query {label}: median {ms:.1f} ms ({rows} rows, {total:,} verifications)")


if __name__ == "__main__":
    main()
