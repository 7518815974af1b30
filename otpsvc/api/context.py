"""Access to the per-app runtime and the authenticated client from inside a request."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

from flask import current_app, g, request

from otpsvc.api.limits import Meet, RequestLimits
from otpsvc.config import ApiClient, Settings
from otpsvc.core.addresses import address_bucket
from otpsvc.core.audit import audit
from otpsvc.core.service import VerificationService
from otpsvc.dev.inbox import CallInbox
from otpsvc.errors import Unauthorized
from otpsvc.events import EventQueue
from otpsvc.logs import SAMPLER
from otpsvc.serving import redact
from otpsvc.store import VerificationStore
from otpsvc.store.connection import RedisClient
from otpsvc.store.gate import Gate
from otpsvc.store.idempotency import IdempotencyStore
from otpsvc.store.rollups import Rollups
from otpsvc.voice.dispatch import Dispatcher


@dataclass
class Runtime:
    """Everything one app instance owns; built once by ``create_app``."""

    settings: Settings
    redis: RedisClient
    store: VerificationStore
    service: VerificationService
    dispatcher: Dispatcher
    request_limits: RequestLimits
    idempotency: IdempotencyStore
    inbox: CallInbox | None
    events: EventQueue
    rollups: Rollups

    def client_for_key(self, presented: str) -> str | None:
        """The client whose key this is. Every stored digest is compared, in constant time."""
        return _holder(presented, self.settings.clients)

    def operator_for_key(self, presented: str) -> str | None:
        """The operator (``OTPSVC_OPERATOR_KEYS``) whose key this is."""
        return _holder(presented, self.settings.operators)


def _holder(presented: str, holders: Iterable[ApiClient]) -> str | None:
    digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
    found: str | None = None
    for holder in holders:
        for key_digest in holder.key_digests:
            if hmac.compare_digest(digest, key_digest):
                found = holder.name
    return found


def runtime() -> Runtime:
    return cast(Runtime, current_app.extensions["otpsvc"])


def authenticate() -> None:
    """``Authorization: Bearer <key>``: 401 unless the key belongs to a configured client.

    A failed attempt counts against the connecting address; over that limit the address gets
    429 for every further wrong key, so key guessing stops there. A valid key is never refused
    by its address's failures: clients behind one egress address (or one gateway) must not lock
    each other out with bad keys, and a key of 96 bits or more is beyond guessing anyway.
    """
    rt = runtime()
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    client = rt.client_for_key(token.strip()) if scheme.lower() == "bearer" else None
    if client is None:
        count_failed_authentication()
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("send the API key as 'Authorization: Bearer <key>'")
        raise Unauthorized("the API key is not valid")
    g.client = client


def count_failed_authentication() -> None:
    """A wrong key or token, counted against the connecting address: 429 once it is over
    ``OTPSVC_RATE_LIMIT_AUTH_FAILURES``."""
    address = client_ip()
    if SAMPLER.allow("auth_failed"):
        # No key material: the address and the path only.
        audit("auth_failed", ip=address, path=redact(request.path))
    runtime().request_limits.meet(Meet("auth_failures", address), audit_fields={"ip": address})


def limit_request(*extra: Meet) -> None:
    """The request limits of an authenticated request, in one round trip: it counts against its
    client's limit (sized for a backend serving many people) and any ``extra`` limit (per
    end-user IP, per client)."""
    request_gate(*extra).run()


def request_gate(*extra: Meet) -> Gate:
    """:func:`limit_request` as a gate, for the store to run first in the round trip of the
    request's first store script."""
    client = current_client()
    return runtime().request_limits.gate(
        Meet("client", client),
        *extra,
        audit_fields={"client": client},
        client=client,
    )


def current_client() -> str:
    return cast(str, g.client)


def client_ip() -> str:
    """The connecting address (an IPv6 one as its network); ``X-Forwarded-For`` counts only
    through trusted hops (ProxyFix)."""
    return address_bucket(request.remote_addr or "", runtime().settings.ipv6_prefix)
