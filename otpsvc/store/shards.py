"""The hash tags every per-number key is filed under, and the event shards that share them.

A number's keys (its verification records, open index, blocks, failure caps) share one hash tag:
the first two hex digits of the number's keyed hash, so there are exactly :data:`SHARDS` tags.
Each tag also holds an event shard: a stream of the events its verifications' changes wrote, an
index of the pending verifications whose expiry is watched, their last snapshots, and the
escalation steps due (see ``store/scripts/_events.lua``). A Lua
script that changes a verification writes its event into the same slot in the same step, on a
single Redis and on a cluster alike; every event worker reads every shard.

The number is fixed: the tag is part of every key name, so changing it would orphan what is
stored. 256 tags spread over the 16384 slots of a cluster give every master a share for
clusters of up to a few dozen masters.
"""

from __future__ import annotations

#: How many hash tags (and event shards) there are.
SHARDS = 256
#: Hex digits of the tag.
TAG_LENGTH = 2
#: Hex digits of the number's hash a verification id starts with (its first ``TAG_LENGTH``
#: are the tag).
ID_PREFIX_LENGTH = 4


def tags() -> list[str]:
    return [f"{n:0{TAG_LENGTH}x}" for n in range(SHARDS)]


def tag_of(key_or_id: str) -> str:
    """The tag of a phone key or a verification id (ids start with their number's hash)."""
    return key_or_id[:TAG_LENGTH]


def stream_key(prefix: str, tag: str) -> str:
    """The shard's stream of events."""
    return f"{prefix}:{{{tag}}}:ev"


def expiring_key(prefix: str, tag: str) -> str:
    """The shard's pending verifications whose expiry is watched, by expiry time (ms)."""
    return f"{prefix}:{{{tag}}}:ex"


def snapshots_key(prefix: str, tag: str) -> str:
    """The last snapshot of each watched verification (the record is gone once it expired)."""
    return f"{prefix}:{{{tag}}}:es"


def ladder_key(prefix: str, tag: str) -> str:
    """The shard's verifications with an escalation step to come, by when it is due (ms)."""
    return f"{prefix}:{{{tag}}}:lq"


def outcomes_key(prefix: str, tag: str) -> str:
    """The shard's outcome entries for the funnel (see :mod:`otpsvc.store.rollups`)."""
    return f"{prefix}:{{{tag}}}:in"


def insights_key(prefix: str, name: str) -> str:
    """A key of the funnel's rollups, all in one slot."""
    return f"{prefix}:{{{prefix}:insights}}:{name}"


def event_keys(prefix: str, tag: str) -> list[str]:
    """The shard's keys, in the order the scripts that write events take them (last)."""
    return [
        stream_key(prefix, tag),
        expiring_key(prefix, tag),
        snapshots_key(prefix, tag),
        ladder_key(prefix, tag),
        outcomes_key(prefix, tag),
    ]
