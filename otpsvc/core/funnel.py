"""The funnel: what verifications cost and how they convert, by any of country, provider,
channel, ladder step, client, number prefix, hour or day (see docs/money.md, "The funnel").

A row's ``verifications`` are the verifications begun, except in rows by provider, channel or
ladder step: there a verification counts once in each it reached (its first call, then the
steps of its ladder), so such rows add up to more than the total. ``approved`` counts where the
approval came: the provider, channel and step of the last send before it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import zip_longest
from typing import Any

from otpsvc.core.views import timestamp
from otpsvc.money import show
from otpsvc.store.rollups import APPROVAL_BOUNDS, DIMENSIONS, METRICS, WIDTH, Cell, Rollups

#: What a funnel may be grouped by.
GROUPS = ("country", "provider", "channel", "step", "client", "prefix", "hour", "day")
#: Groups that follow each send rather than the verification.
SEND_GROUPS = frozenset({"provider", "channel", "step"})
TIME_GROUPS = {"hour": 3_600_000, "day": 86_400_000}


class BadGrouping(ValueError):
    """``group_by`` names a group that does not exist or cannot go with another."""


@dataclass(frozen=True)
class FunnelAsk:
    start_ms: int
    end_ms: int
    group_by: tuple[str, ...]
    #: Only this client's rows (a client key); None: every client's (an operator key).
    client: str | None


def parse_groups(text: str) -> tuple[str, ...]:
    """``"country, provider"`` -> the groups named (checked by :func:`kind_for`)."""
    return tuple(g for g in text.replace(" ", "").split(",") if g)


def read_funnel(
    rollups: Rollups, ask: FunnelAsk, now_ms: int, currency: str | None
) -> dict[str, Any]:
    """The funnel of ``ask`` from the rollups: its range no further back than they are kept,
    widened to the whole hours or days they are read by."""
    start = max(ask.start_ms, now_ms - rollups.days_ms)
    span, start, end = rollups.span(start, ask.end_ms, now_ms)
    kind = kind_for(ask.group_by)
    cells = rollups.read(kind, span, start, end)
    return funnel(FunnelAsk(start, end, ask.group_by, ask.client), cells, currency)


def kind_for(group_by: Sequence[str]) -> str:
    """The smallest rollup whose dimensions cover a grouping (see ``store/rollups.py``)."""
    unknown = [g for g in group_by if g not in GROUPS]
    if unknown:
        raise BadGrouping(f"unknown group {unknown[0]!r}; groups: {', '.join(GROUPS)}")
    if len(set(group_by)) != len(group_by):
        raise BadGrouping("a group is named twice")
    wanted = set(group_by) - set(TIME_GROUPS)
    if "prefix" in wanted:
        mixed = SEND_GROUPS.intersection(wanted)
        if mixed:
            raise BadGrouping(
                f"prefix cannot be grouped with {', '.join(sorted(mixed))} (prefixes are "
                "counted by client and country only)"
            )
        return "x"
    return next(kind for kind in "crm" if wanted <= set(DIMENSIONS[kind]))


def funnel(ask: FunnelAsk, cells: Iterable[Cell], currency: str | None) -> dict[str, Any]:
    """The answer of ``GET /insights/funnel`` from the rollup cells of its range."""
    kind = kind_for(ask.group_by)
    names = DIMENSIONS[kind]
    by_send = bool(SEND_GROUPS.intersection(ask.group_by))
    # Each group's counts, gathered as text and summed column by column at the end.
    places = [(g, names.index(g) if g in names else -1) for g in ask.group_by]
    gathered: dict[tuple[str, ...], list[str]] = defaultdict(list)
    moments: dict[tuple[str, int], str] = {}
    for cell in cells:
        dims = cell.dimensions.split("|")
        if ask.client is not None and dims[0] != ask.client:
            continue
        key = tuple(dims[i] if i >= 0 else _moment(moments, g, cell.at_ms) for g, i in places)
        gathered[key].append(cell.counts)
    rows = {key: _sum(values) for key, values in gathered.items()}
    total = [sum(column) for column in zip(*rows.values(), strict=True)] if rows else [0] * WIDTH
    return {
        "currency": currency,
        "from": timestamp(ask.start_ms / 1000),
        "to": timestamp(ask.end_ms / 1000),
        "group_by": list(ask.group_by),
        "total": _figures(total, reached=False),
        "rows": [
            {**dict(zip(ask.group_by, key, strict=True)), **_figures(counts, reached=by_send)}
            for key, counts in sorted(rows.items())
        ],
    }


def _sum(packed: list[str]) -> list[int]:
    """Packed counts (``1,1,1,0,0,12000``, trailing zeros left off) summed per column."""
    columns = zip_longest(*(map(int, text.split(",")) for text in packed), fillvalue=0)
    sums = [sum(column) for column in columns]
    return sums + [0] * (WIDTH - len(sums))


def _moment(seen: dict[tuple[str, int], str], group: str, at_ms: int) -> str:
    """The hour or day of a cell, as a timestamp (worked out once per hour or day)."""
    if (group, at_ms) not in seen:
        seen[(group, at_ms)] = timestamp((at_ms - at_ms % TIME_GROUPS[group]) / 1000)
    return seen[(group, at_ms)]


def _figures(counts: list[int], *, reached: bool) -> dict[str, Any]:
    named = dict(zip(METRICS, counts, strict=False))
    verifications = named["reached"] if reached else named["verifications"]
    approved, spend = named["approved"], named["spend"]
    buckets = counts[len(METRICS) :]
    return {
        "verifications": verifications,
        "sends": named["sends"],
        "answered": named["answered"],
        "approved": approved,
        "conversion": round(approved / verifications, 4) if verifications else None,
        "spend": show(spend),
        "cost_per_approval": show(_divide(spend, approved)) if approved else None,
        "seconds_to_approval": {"p50": _quantile(buckets, 0.5), "p95": _quantile(buckets, 0.95)},
    }


def _divide(amount: int, by: int) -> int:
    """``amount / by`` rounded half up, exactly (micro-units)."""
    return (2 * amount + by) // (2 * by)


def _quantile(buckets: list[int], q: float) -> int | None:
    """The upper bound of the bucket holding the ``q`` quantile (seconds): "at most this";
    None without approvals or when it is past the last bound (10 minutes)."""
    count = sum(buckets)
    if not count:
        return None
    rank, seen = q * count, 0
    for index, n in enumerate(buckets):
        seen += n
        if seen >= rank:
            return APPROVAL_BOUNDS[index] if index < len(APPROVAL_BOUNDS) else None
    return None  # pragma: no cover - the buckets sum to count


def parse_moment(text: str, field: str) -> int:
    """An RFC 3339 timestamp as Unix ms; a timezone is required."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise ValueError(
            f"{field}: not an RFC 3339 timestamp such as 2026-12-07T00:00:00Z"
        ) from exc
    if moment.tzinfo is None:
        raise ValueError(f"{field}: an RFC 3339 timestamp needs its offset (Z or +01:00)")
    return int(moment.astimezone(UTC).timestamp() * 1000)
