"""Idempotency keys on ``POST /otp/start``: a retried request gets the first answer again.

One hash per (API client, key) at ``<prefix>:idem:{<client>:<key digest>}``, so every step is one
script on one slot. The key itself is stored only as a digest. While the first request runs, its
claim is a lease (``LEASE_MS``): a worker that dies mid-request frees the key when the lease ends,
instead of holding it for the whole retention time.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass, field
from importlib import resources

from otpsvc.store.connection import RedisClient, store_guard
from otpsvc.telemetry import TracedScript

#: How long a running request holds its key: longer than the slowest start (every provider's
#: connect and read timeouts in turn), shorter than a gateway would wait before giving up.
LEASE_MS = 120_000


@dataclass(frozen=True)
class Claim:
    """``go`` (this request runs, with ``token``), ``reused``, ``running`` or ``done``."""

    outcome: str
    token: str = ""
    status: int = 0
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)


def fingerprint(body: object) -> str:
    """The request body, canonical: the same JSON in another key order or spacing is the same."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class IdempotencyStore:
    def __init__(self, client: RedisClient, prefix: str, ttl_seconds: int) -> None:
        self.prefix = prefix
        self.ttl_ms = ttl_seconds * 1000
        script = resources.files("otpsvc.store").joinpath("scripts", "idempotency.lua")
        self._script = TracedScript("idempotency", client.register_script(script.read_text()))

    def key(self, client: str, idempotency_key: str) -> str:
        digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]
        return f"{self.prefix}:idem:{{{client}:{digest}}}"

    def claim(self, client: str, idempotency_key: str, body_fingerprint: str) -> tuple[str, Claim]:
        """Take the key for this request, or learn what became of the request that took it."""
        key = self.key(client, idempotency_key)
        token = secrets.token_hex(8)
        with store_guard():
            answer = self._script(keys=[key], args=["claim", body_fingerprint, token, LEASE_MS])
        outcome = str(answer[0])
        if outcome == "go":
            return key, Claim("go", token=token)
        if outcome == "done":
            headers = json.loads(answer[3]) if answer[3] else {}
            return key, Claim("done", status=int(answer[1]), body=str(answer[2]), headers=headers)
        return key, Claim(outcome)

    def finish(
        self, key: str, claim: Claim, status: int, body: str, headers: dict[str, str]
    ) -> None:
        """Keep the first answer (status, body and the headers that go with it) for the
        retention time."""
        kept = json.dumps(headers)
        with store_guard():
            self._script(keys=[key], args=["finish", claim.token, status, body, self.ttl_ms, kept])

    def release(self, key: str, claim: Claim) -> None:
        """Forget a claim whose request changed nothing, so a retry runs afresh."""
        with store_guard():
            self._script(keys=[key], args=["release", claim.token])
