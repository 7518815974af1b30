"""Secrets: the settings that hold them, how strong a made-up one must be, and ``*_FILE``."""

from __future__ import annotations

import base64
import binascii
import itertools
import math
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MIN_API_KEY_LENGTH = 24


MIN_SECRET_LENGTH = 32


#: Estimated entropy a secret we make ourselves must have: the server secret, an API key.
MIN_SECRET_BITS = 128


MIN_API_KEY_BITS = 96


#: Words that mark a value copied from an example rather than generated.
PLACEHOLDER_MARKERS = ("change-me", "changeme", "change_me", "replace-me", "placeholder", "your-")


GENERATE_HINT = "generate one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"


def _shannon_bits(symbols: list[int]) -> float:
    if not symbols:
        return 0.0
    counts = Counter(symbols)
    n = len(symbols)
    return -sum(c / n * math.log2(c / n) for c in counts.values()) * n


def estimated_bits(value: str) -> float:
    """A secret's entropy as its length times the Shannon entropy of its characters.

    A coarse guard, not a proof: it refuses repeated or tiny alphabets ("kkkk...", "aaaa1111")
    and short values; a random key from ``secrets.token_urlsafe(32)`` scores about 200 bits.
    """
    return _shannon_bits([ord(c) for c in value])


def sequence_bits(value: str) -> float:
    """The same measure over the steps from one character to the next: a run such as an
    alphabet ("abcdef...", "0123456789") has many characters but one step, so it scores near 0,
    while a random key scores about as high as on its characters."""
    return _shannon_bits([ord(b) - ord(a) for a, b in itertools.pairwise(value)])


def weakness(value: str, min_bits: float) -> str | None:
    """Why a secret is not good enough, or None. The one rule every secret setting is held to:
    no placeholder, enough entropy in its characters, and at least half of that in its steps
    (no alphabet or keyboard run)."""
    lowered = value.lower()
    if any(marker in lowered for marker in PLACEHOLDER_MARKERS):
        return f"is a placeholder from an example; {GENERATE_HINT}"
    if estimated_bits(value) < min_bits or sequence_bits(value) < min_bits / 2:
        return f"looks too easy to guess (under {min_bits} bits); {GENERATE_HINT}"
    return None


#: Settings that hold secrets: each may instead come from a file named by ``<name>_FILE``, and
#: ``otpsvc check-config`` never prints them.
SECRET_SETTINGS = frozenset(
    {
        "OTPSVC_REDIS_URL",
        "OTPSVC_SECRET_KEY",
        "OTPSVC_SECRET_KEY_FALLBACKS",
        "OTPSVC_API_KEYS",
        "OTPSVC_TEST_NUMBERS",
        "OTPSVC_METRICS_TOKEN",
        "OTPSVC_OPERATOR_KEYS",
        "OTPSVC_EVENT_WEBHOOK_SECRETS",
        "OTPSVC_TERMII_API_KEY",
        "OTPSVC_TERMII_WEBHOOK_SECRET",
        "OTPSVC_SEVENIO_API_KEY",
        "OTPSVC_SEVENIO_SIGNING_KEY",
        "OTPSVC_CEQUENS_API_KEY",
        "OTPSVC_ALPHASMS_API_KEY",
    }
)


#: Secrets that someone else could use to act as otpsvc or as a provider if they guessed them (the
#: others above are checked where they are parsed). Provider API keys are not judged: the
#: provider issues them in its own format.
GUESSABLE_SECRETS = frozenset(
    {"OTPSVC_METRICS_TOKEN", "OTPSVC_TERMII_WEBHOOK_SECRET", "OTPSVC_SEVENIO_SIGNING_KEY"}
)


#: Standard Webhooks recommends signing secrets of 24 to 64 random bytes.
MIN_WEBHOOK_SECRET_BYTES = 24


def webhook_secret_weakness(secret: str) -> str | None:
    """A ``whsec_`` secret shorter than 24 bytes, or whose bytes are not random enough."""
    encoded = secret.removeprefix("whsec_")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return "not a whsec_<base64> signing secret"
    if len(raw) < MIN_WEBHOOK_SECRET_BYTES:
        return (
            f"{len(raw)} bytes; make one of at least {MIN_WEBHOOK_SECRET_BYTES} random bytes: "
            'python3 -c \'import base64,secrets; print("whsec_" + '
            "base64.b64encode(secrets.token_bytes(32)).decode())'"
        )
    return weakness(encoded, MIN_SECRET_BITS)


def read_secret_files(env: Mapping[str, Any], problems: list[str]) -> dict[str, Any]:
    """``<NAME>_FILE`` names a file holding the value of the secret setting ``<NAME>`` (as Docker
    and Kubernetes mount secrets). Setting both is an error: which one wins would be a guess."""
    out = dict(env)
    for name in sorted(SECRET_SETTINGS):
        path = env.get(f"{name}_FILE")
        if path is None:
            continue
        del out[f"{name}_FILE"]
        if name in env:
            problems.append(f"{name}: set either {name} or {name}_FILE, not both")
            continue
        try:
            out[name] = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{name}_FILE: cannot read {path}: {type(exc).__name__}")
    return out
