"""From otpsvc 0.1's key layout to the current one: ``otpsvc migrate-keys``.

otpsvc 0.1 filed a number's keys under a four-hex-digit hash tag (``{abcd}``) and wrote events
into one stream of their own; now the tag is two hex digits (``{ab}``, the first two of the
same hash) so that each tag can hold the event shard its changes are written to (see
:mod:`otpsvc.store.shards`). Verification ids did not change: an id still starts with its
number's four hex digits, so a moved record is found under its id.

The move copies each key with ``DUMP``/``RESTORE`` (its remaining time to live kept), then
deletes the old one: it works across slots on a cluster. A key the new layout already has (a
newer write) is kept, and the old one dropped. The expiry watch of 0.1 (for
``verification.expired``) becomes each shard's. Running it twice is harmless; run it once the
last 0.1 process is gone (and again to sweep up what a straggler wrote).
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import redis

from otpsvc.store.connection import RedisClient
from otpsvc.store.shards import TAG_LENGTH, expiring_key, snapshots_key, tag_of


@dataclass
class Migration:
    moved: int = 0
    #: Old keys dropped because the new layout already had a newer one.
    superseded: int = 0
    #: Pending verifications whose expiry is now watched by their shard.
    watched: int = 0


def migrate_keys(client: RedisClient, prefix: str, webhook_clients: Collection[str]) -> Migration:
    r: Any = client
    done = Migration()
    old = re.compile(re.escape(prefix) + r":\{([0-9a-f]{4})\}:(.+)")
    for key in r.scan_iter(match=f"{prefix}:{{????}}:*", count=1000):
        found = old.fullmatch(str(key))
        if found is None:
            continue
        tag, rest = found.groups()
        new = f"{prefix}:{{{tag[:TAG_LENGTH]}}}:{rest}"
        dumped, ttl_ms = r.dump(key), int(r.pttl(key))
        if dumped is None or ttl_ms == -2:
            continue  # expired meanwhile
        try:
            r.restore(new, max(ttl_ms, 0), dumped)
            done.moved += 1
        except redis.ResponseError as exc:
            if "BUSYKEY" not in str(exc):
                raise
            done.superseded += 1
        r.delete(key)
    done.watched = _watch_expiries(r, prefix, webhook_clients)
    return done


def _watch_expiries(r: Any, prefix: str, webhook_clients: Collection[str]) -> int:
    """0.1 watched pending verifications in one sorted set (and their views in a hash); each
    shard watches its own now, with a snapshot of the record."""
    expiring, pending = (
        f"{prefix}:{{{prefix}:events}}:expiring",
        f"{prefix}:{{{prefix}:events}}:pending",
    )
    watched = 0
    for verification_id, expires_ms in r.zrange(expiring, 0, -1, withscores=True):
        tag = tag_of(verification_id)
        record = r.hgetall(f"{prefix}:{{{tag}}}:v:{verification_id}")
        if record.get("st") != "pending" or record.get("c") not in webhook_clients:
            continue
        record.pop("h", None)
        r.hset(snapshots_key(prefix, tag), verification_id, json.dumps(record))
        r.zadd(expiring_key(prefix, tag), {verification_id: int(expires_ms)})
        watched += 1
    r.delete(expiring, pending)
    return watched
