"""Request limits: per end-user IP, per API client, and on failed authentication.

Each limit is a sliding window in Redis (a sorted set of the requests of the last window), like
the call velocity limits, and every limit a request meets is decided in one script: one round
trip, all or nothing, on the service's one clock, failing closed when Redis is away. The
``limits`` library parses the limit strings (``10 per minute;60 per hour``).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import limits

from otpsvc import metrics
from otpsvc.config import Settings
from otpsvc.core.audit import audit
from otpsvc.errors import RateLimited
from otpsvc.store.connection import RedisClient
from otpsvc.store.gate import Gate
from otpsvc.telemetry import TracedScript


@dataclass(frozen=True)
class Window:
    scope: str
    limit: int
    window_ms: int
    text: str


@dataclass(frozen=True)
class Meet:
    """One limit a request meets, and ``who`` it counts."""

    scope: str
    who: str


class RequestLimits:
    def __init__(
        self,
        client: RedisClient,
        settings: Settings,
        clock: Callable[[], float],
        name_of: Callable[[str, str], str],
    ) -> None:
        #: (scope, who) -> the keyed name a counter is stored under: no address in the clear.
        self.name_of = name_of
        self.tag = f"{settings.redis_prefix}:{{{settings.redis_prefix}:requests}}"
        self.clock = clock
        script = resources.files("otpsvc.store").joinpath("scripts", "windows.lua")
        self._script = TracedScript("request_limits", client.register_script(script.read_text()))
        self._windows = self._windows_of(settings)
        #: A client of the client file counts against its own limits.
        self._client_windows = {
            name: self._windows_of(own) for name, own in settings.client_settings.items()
        }

    @staticmethod
    def _windows_of(settings: Settings) -> dict[str, list[Window]]:
        specs = {
            "start_ip": settings.rate_limit_start_ip,
            "check_ip": settings.rate_limit_check_ip,
            "client": settings.rate_limit_client,
            "auth_failures": settings.rate_limit_auth_failures,
        }
        return {
            scope: [
                Window(scope, item.amount, item.get_expiry() * 1000, str(item))
                for item in limits.parse_many(spec)
            ]
            for scope, spec in specs.items()
        }

    def meet(
        self,
        *items: Meet,
        audit_fields: dict[str, object] | None = None,
        client: str | None = None,
    ) -> None:
        """Count one request against every window of the given limits (``client``'s own, when
        the client file gives it some); over any of them it is 429 ``rate_limited`` and nothing
        is counted. Retry-After says when the window has room."""
        self.gate(*items, audit_fields=audit_fields, client=client).run()

    def gate(
        self,
        *items: Meet,
        audit_fields: dict[str, object] | None = None,
        client: str | None = None,
    ) -> Gate:
        """:meth:`meet` as a gate, for a store script to run first in its own round trip."""
        table = self._client_windows.get(client or "", self._windows)
        keys: list[str] = []
        spec: list[str] = []
        windows: list[Window] = []
        for item in items:
            who = self.name_of(item.scope, item.who)
            for window in table[item.scope]:
                keys.append(f"{self.tag}:{item.scope}:{who}:{window.window_ms}")
                spec.append(f"{window.limit} {window.window_ms} h")
                windows.append(window)
        args: list[int | str] = [int(self.clock() * 1000), secrets.token_hex(8), 0, " ".join(spec)]

        def settle(result: Any) -> None:
            index = int(result[0])
            if index == 0:
                return
            window = windows[index - 1]
            audit("limit_hit", limit=window.scope, window=window.text, **(audit_fields or {}))
            metrics.REFUSALS.labels(f"limit_{window.scope}").inc()
            raise RateLimited(
                int(result[1]) / 1000,
                f"rate limit exceeded: {window.text} ({window.scope})",
                limit=f"rate_limit_{window.scope}",
                scope="address" if window.scope == "auth_failures" else "client",
            )

        return Gate(self._script, keys, args, settle)
