"""From otpsvc 0.1's key layout to the current one: ``otpsvc migrate-keys``.

otpsvc 0.1 filed a number's keys under a four-hex-digit hash tag (``{abcd}``) and wrote events
into one stream of their own; now the tag is two hex digits (``{ab}``, the first two of the
same hash) so that each tag can hold the event shard its changes are written to (see
:mod:`otpsvc.store.shards`). Verification ids did not change: an id still starts with its
number's four hex digits, so a moved record is found under its id.

The move copies each key with ``DUMP``/``RESTORE`` (its remaining time to live kept), then
deletes the old one: it works across slots on a cluster. Where the new layout already has the
key (a process of the new version wrote it meanwhile), what both counted is merged: failure
counts are added, "not me" denials and other sorted sets united, and the longer life kept; any
other key the new layout has is newer, and the old one is dropped. The expiry watch of 0.1 (for
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
    #: Old keys merged into the new layout's (counts added, sets united).
    merged: int = 0
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
            if _merge(r, key, new, ttl_ms):
                done.merged += 1
            else:
                done.superseded += 1
        r.delete(key)
    done.watched = _watch_expiries(r, prefix, webhook_clients)
    return done


def _merge(r: Any, old: str, new: str, ttl_ms: int) -> bool:
    """Fold what ``old`` counted into ``new`` (both the same kind of key): integer counts are
    added, sorted sets and sets united; the longer time to live is kept. False for any other
    key (a record, a marker), where the new layout's is the newer one."""
    kind = str(r.type(old))
    if kind != str(r.type(new)):
        return False
    if kind == "zset":
        members = r.zrange(old, 0, -1, withscores=True)
        if members:
            r.zadd(new, dict(members), gt=True)
    elif kind == "set":
        members = r.smembers(old)
        if members:
            r.sadd(new, *members)
    elif kind == "string":
        value = str(r.get(old) or "")
        if not value.lstrip("-").isdigit() or not str(r.get(new) or "0").lstrip("-").isdigit():
            return False
        r.incrby(new, int(value))
    else:
        return False
    if ttl_ms > int(r.pttl(new)) >= 0:
        r.pexpire(new, ttl_ms)
    return True


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
