"""Access to the per-app runtime and the authenticated client from inside a request."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import cast

import redis
from flask import current_app, g, request
from flask_limiter import Limiter

from otpsvc.config import Settings
from otpsvc.core.service import VerificationService
from otpsvc.dev.inbox import CallInbox
from otpsvc.errors import Unauthorized
from otpsvc.store import VerificationStore
from otpsvc.voice.dispatch import Dispatcher


@dataclass
class Runtime:
    """Everything one app instance owns; built once by ``create_app``."""

    settings: Settings
    redis: redis.Redis
    store: VerificationStore
    service: VerificationService
    dispatcher: Dispatcher
    limiter: Limiter
    inbox: CallInbox | None

    def client_for_key(self, presented: str) -> str | None:
        """The client whose key this is. Every stored digest is compared, in constant time."""
        digest = hashlib.sha256(presented.encode()).digest()
        found: str | None = None
        for client in self.settings.clients:
            if hmac.compare_digest(digest, client.key_digest):
                found = client.name
        return found


def runtime() -> Runtime:
    return cast(Runtime, current_app.extensions["otpsvc"])


def authenticate() -> None:
    """``Authorization: Bearer <key>``: 401 unless the key belongs to a configured client."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("send the API key as 'Authorization: Bearer <key>'")
    client = runtime().client_for_key(token.strip())
    if client is None:
        raise Unauthorized("the API key is not valid")
    g.client = client


def current_client() -> str:
    return cast(str, g.client)


def client_ip() -> str:
    """The caller's address; ``X-Forwarded-For`` counts only through trusted hops (ProxyFix)."""
    return request.remote_addr or "unknown"
