"""The funnel's counts (see docs/money.md, "The funnel").

The scripts that change a verification add an outcome entry to their shard's ``:in`` stream in
the same step (a new verification and its first send, a further send, an answered call, an
approval): nothing is counted that did not happen, nothing that happened goes uncounted, and a
start or a check makes no extra round trip. ``otpsvc worker`` folds those entries into rollup
hashes, one per hour and one per UTC day, in one slot (``fold.lua``: exactly once, even when
it is killed or two workers fold at once). A rollup's field is a set of dimensions; its value,
comma-separated counts (:data:`METRICS`).

Four kinds of rollup, each answering the groupings its dimensions cover with as few fields as
it can: ``c`` by client and country, ``r`` by client and route (provider, channel, ladder
step), ``m`` by both, ``x`` by client, country and number prefix (a prefix with the route would
multiply the fields by the routes). Hours are kept :data:`HOURS_KEPT_MS`, days
``OTPSVC_INSIGHTS_DAYS``.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

from otpsvc.store.connection import RedisClient, per_node, store_guard
from otpsvc.store.conversion import ConversionStore, Suspension
from otpsvc.store.records import script_source
from otpsvc.store.shards import insights_key, outcomes_key, tags
from otpsvc.telemetry import TracedScript

#: The counts of a rollup field, in order: verifications begun, steps reached (a verification
#: counts once in each ladder step, provider and channel it reached), sends placed, calls
#: answered, approvals, money (micro-units), then approvals by seconds from the start, in
#: the buckets of :data:`APPROVAL_BOUNDS` and one past the last.
METRICS = ("verifications", "reached", "sends", "answered", "approved", "spend")
#: Upper bounds, in seconds, of the buckets of the time from start to approval.
APPROVAL_BOUNDS = (5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600)
WIDTH = len(METRICS) + len(APPROVAL_BOUNDS) + 1
#: The dimensions of each kind of rollup, in the order of a field.
DIMENSIONS = {
    "c": ("client", "country"),
    "r": ("client", "provider", "channel", "step"),
    "m": ("client", "country", "provider", "channel", "step"),
    "x": ("client", "country", "prefix"),
}
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
#: How long the hourly rollups are kept; older ranges are answered by whole days.
HOURS_KEPT_MS = 48 * HOUR_MS
#: Entries folded per shard and turn.
BATCH = 1000
#: How often a worker folds.
FOLD_SECONDS = 1.0


def bucket_of(seconds: float) -> int:
    """The index of the approval-time bucket ``seconds`` falls in."""
    for index, bound in enumerate(APPROVAL_BOUNDS):
        if seconds <= bound:
            return index
    return len(APPROVAL_BOUNDS)


def increments(kind: str, value: int) -> list[int]:
    """What one outcome entry adds: ``v`` a verification begun with its first send (``value``:
    its price), ``f`` one begun whose first send failed, ``r`` a ladder step reached with its
    send, ``s`` a resend, ``a`` a call answered, ``ok`` an approval (``value``: ms from the
    start)."""
    counts = [0] * WIDTH
    if kind in ("v", "f"):
        counts[0] = counts[1] = 1
    if kind == "r":
        counts[1] = 1
    if kind in ("v", "r", "s"):
        counts[2], counts[5] = 1, value
    if kind == "a":
        counts[3] = 1
    if kind == "ok":
        counts[4] = 1
        counts[len(METRICS) + bucket_of(value / 1000)] = 1
    return counts


def pack(counts: Iterable[int]) -> str:
    """Counts as a rollup's value, trailing zeros left off."""
    values = list(counts)
    while len(values) > 1 and values[-1] == 0:
        values.pop()
    return ",".join(str(v) for v in values)


def split_dimensions(dims: str) -> dict[str, str]:
    """An entry's dimensions (``client|country|prefix|provider|channel|step``) as each kind's
    field."""
    values = dict(zip(ENTRY, dims.split("|"), strict=True))
    return {kind: "|".join(values[d] for d in names) for kind, names in DIMENSIONS.items()}


#: The dimensions of an outcome entry, in the order ``_events.lua`` writes them.
ENTRY = ("client", "country", "prefix", "provider", "channel", "step")


class Cell(NamedTuple):
    """One rollup field: the start of its hour or day (Unix ms), its dimensions
    (``|``-separated, in the order of its kind's :data:`DIMENSIONS`) and its counts (as
    :func:`pack` wrote them). A tuple: a month's query makes tens of thousands."""

    at_ms: int
    dimensions: str
    counts: str


class Rollups:
    """Folds the shards' outcome entries, and reads the rollups back (on a client that decodes
    replies, as :func:`otpsvc.store.connection.connect` makes them)."""

    def __init__(
        self,
        client: RedisClient,
        prefix: str,
        *,
        days: int = 35,
        conversion: ConversionStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``days`` 0: no rollups. ``conversion``: the conversion rule also reads the entries
        (see :mod:`otpsvc.store.conversion`), on ``clock``'s time."""
        self.redis = client
        self.prefix = prefix
        self.days = days
        self.days_ms = days * DAY_MS
        self.conversion = conversion
        self.clock = clock
        #: The suspensions the conversion rule made in the last fold (for the worker's
        #: metrics).
        self.made: list[Suspension] = []
        self.markers = insights_key(prefix, "folded")
        #: Each shard's stream of outcome entries, and the shard's tag.
        self.streams = {outcomes_key(prefix, tag): tag for tag in tags()}
        self._fold = TracedScript("fold", client.register_script(script_source("fold")))
        self._next_fold = 0.0

    def rollup_key(self, kind: str, span: str, start_ms: int) -> str:
        """An hour's (``span`` ``h``) or a day's (``d``) rollup of ``kind``."""
        number = start_ms // (HOUR_MS if span == "h" else DAY_MS)
        return insights_key(self.prefix, f"{kind}:{span}{number}")

    def expiry(self, span: str, start_ms: int) -> int:
        """When the rollup of the hour or day that holds ``start_ms`` expires (Unix ms): an
        hour's after :data:`HOURS_KEPT_MS`, a day's after the days kept."""
        if span == "h":
            return start_ms - start_ms % HOUR_MS + HOUR_MS + HOURS_KEPT_MS
        return start_ms - start_ms % DAY_MS + DAY_MS + self.days_ms

    def tick(self) -> None:
        """Fold, at most once every :data:`FOLD_SECONDS` (a task of the worker's loop)."""
        if time.monotonic() >= self._next_fold:
            self._next_fold = time.monotonic() + FOLD_SECONDS
            self.fold()

    def fold(self) -> int:
        """Fold what every shard has added since its marker; the entries folded."""
        with store_guard():
            return self._fold_all()

    def _fold_all(self) -> int:
        r: Any = self.redis
        folded_at = r.hgetall(self.markers) if self.days else {}
        applied_at = self.conversion.markers() if self.conversion else {}
        # Each reader of the entries (the rollups, the conversion rule) has its marker per
        # shard; the entries are read after the earlier of the two, trimmed up to it.
        starts = {}
        for key, tag in self.streams.items():
            readers = ((folded_at, self.days), (applied_at, self.conversion is not None))
            read = [m.get(tag, "0-0") for m, on in readers if on]
            starts[key] = min(read, key=_entry_order) if read else "0-0"
        found = per_node(
            self.redis,
            list(self.streams),
            lambda pipe, key: pipe.xrange(key, f"({starts[key]}", "+", count=BATCH),
        )
        folded = 0
        ends: dict[str, list[str]] = {}
        batches: list[tuple[str, str, str, list[Any]]] = []
        for key, entries in found.items():
            if isinstance(entries, Exception) or not entries:
                continue
            tag, last = self.streams[key], entries[-1][0]
            if self.days:
                after = folded_at.get(tag, "0-0")
                news = _after(entries, after)
                now = self._fold_batch(tag, after, last, news) if news else after
                if now == last:
                    folded += len(entries)
                ends.setdefault(key, []).append(now)
            if self.conversion is not None:
                after = applied_at.get(tag, "0-0")
                batches.append((tag, after, last, _after(entries, after)))
        if self.conversion is not None:
            markers, self.made = self.conversion.apply(batches, int(self.clock() * 1000))
            by_tag = {tag: key for key, tag in self.streams.items()}
            for (tag, *_), marker in zip(batches, markers, strict=True):
                ends.setdefault(by_tag[tag], []).append(marker)
        trims = {key: min(marks, key=_entry_order) for key, marks in ends.items()}
        if trims:
            per_node(self.redis, list(trims), lambda pipe, key: _trim(pipe, key, trims[key]))
        return folded

    def _fold_batch(self, tag: str, after: str, last: str, entries: list[Any]) -> str:
        sums: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0] * WIDTH)
        expiries: dict[str, int] = {}
        for entry_id, fields in entries:
            at_ms = int(entry_id.split("-")[0])
            counts = increments(fields["k"], int(fields.get("n") or 0))
            for kind, field in split_dimensions(fields["d"]).items():
                for span in ("h", "d"):
                    key = self.rollup_key(kind, span, at_ms)
                    expiries[key] = self.expiry(span, at_ms)
                    total = sums[(key, field)]
                    for i, n in enumerate(counts):
                        total[i] += n
        keys = sorted(expiries)
        index = {key: i + 2 for i, key in enumerate(keys)}
        args: list[str | int] = [tag, after, last, self.days_ms + HOURS_KEPT_MS]
        args += [expiries[key] for key in keys]
        for (key, field), counts in sums.items():
            args += [index[key], field, pack(counts)]
        return str(self._fold(keys=[self.markers, *keys], args=args))

    # Reading ----------------------------------------------------------------------------------

    def span(self, start_ms: int, end_ms: int, now_ms: int) -> tuple[str, int, int]:
        """How a range is read: by hours while its start is within the hours kept, else by
        whole UTC days; the range widened to whole hours or days."""
        if start_ms >= now_ms - HOURS_KEPT_MS + HOUR_MS:
            return "h", start_ms - start_ms % HOUR_MS, -(-end_ms // HOUR_MS) * HOUR_MS
        return "d", start_ms - start_ms % DAY_MS, -(-end_ms // DAY_MS) * DAY_MS

    def read(self, kind: str, span: str, start_ms: int, end_ms: int) -> Iterator[Cell]:
        """Every rollup field of ``kind`` in [start, end), ``span`` ``h`` or ``d``."""
        step = HOUR_MS if span == "h" else DAY_MS
        starts = list(range(start_ms, end_ms, step))
        pipe: Any = self.redis.pipeline(transaction=False)
        for at in starts:
            pipe.hgetall(self.rollup_key(kind, span, at))
        with store_guard():
            answers = pipe.execute()
        for at_ms, fields in zip(starts, answers, strict=True):
            for field, value in fields.items():
                yield Cell(at_ms, field, value)


def _entry_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _after(entries: list[Any], marker: str) -> list[Any]:
    """The entries after ``marker``."""
    bound = _entry_order(marker)
    return [entry for entry in entries if _entry_order(entry[0]) > bound]


def _trim(pipe: Any, key: str, marker: str) -> None:
    """Drop a stream's entries up to ``marker`` (folded)."""
    ms, _, seq = marker.partition("-")
    pipe.xtrim(key, minid=f"{ms}-{int(seq or 0) + 1}", approximate=False)
