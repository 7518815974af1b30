"""Idempotency keys on ``POST /otp/start``: a retried request gets the first answer again.

One hash per (API client, key) at ``<prefix>:idem:{<prefix>:idem:<client>}:<key digest>``, beside
the client's index of its records (``<prefix>:idem:{<prefix>:idem:<client>}``) in the same slot,
so every step is one script. The key itself is stored only as a digest. While the first request
runs, its claim is a lease (``LEASE_MS``): a worker that dies mid-request frees the key when the
lease ends, instead of holding it for the whole retention time.

Only answers that changed something are kept (see :mod:`otpsvc.api.otp`), and one client holds
at most ``max_keys`` records at once: a client sending a new key with every refused request
cannot fill Redis for the others.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from otpsvc.errors import RateLimited
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
    def __init__(
        self,
        client: RedisClient,
        prefix: str,
        ttl_seconds: int,
        *,
        max_keys: int,
        clock: Callable[[], float],
    ) -> None:
        self.prefix = prefix
        self.ttl_ms = ttl_seconds * 1000
        self.max_keys = max_keys
        self.clock = clock
        script = resources.files("otpsvc.store").joinpath("scripts", "idempotency.lua")
        self._script = TracedScript("idempotency", client.register_script(script.read_text()))

    def index_key(self, client: str) -> str:
        return f"{self.prefix}:idem:{{{self.prefix}:idem:{client}}}"

    def key(self, client: str, idempotency_key: str) -> str:
        digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]
        return f"{self.index_key(client)}:{digest}"

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _run(self, key: str, op: str, *args: str | int) -> Any:
        index = key.rpartition(":")[0]
        with store_guard():
            return self._script(keys=[key, index], args=[op, self._now_ms(), *args])

    def claim(self, client: str, idempotency_key: str, body_fingerprint: str) -> tuple[str, Claim]:
        """Take the key for this request, or learn what became of the request that took it.
        A client already holding ``max_keys`` records is refused (429) until one ends."""
        key = self.key(client, idempotency_key)
        token = secrets.token_hex(8)
        answer = self._run(key, "claim", body_fingerprint, token, LEASE_MS, self.max_keys)
        outcome = str(answer[0])
        if outcome == "full":
            raise RateLimited(
                int(answer[1]) / 1000,
                "this client holds the most Idempotency-Key records it may; retry later",
                limit="idempotency_max_keys",
                scope="client",
            )
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
        self._run(key, "finish", claim.token, status, body, self.ttl_ms, json.dumps(headers))

    def release(self, key: str, claim: Claim) -> None:
        """Forget a claim whose request changed nothing, so a retry runs afresh."""
        self._run(key, "release", claim.token)
