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


#: The limits kept per end user (their address), each in windows of its own: what a client
#: that invents addresses could multiply, so they are capped per client and hour.
PERSONAL = frozenset({"start_ip", "check_ip"})


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
        self._persons_max = {
            name: own.end_user_addresses_max for name, own in settings.client_settings.items()
        }
        self._persons_max_default = settings.end_user_addresses_max

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
        now_ms = int(self.clock() * 1000)
        keys: list[str] = []
        spec: list[str] = []
        windows: list[Window] = []
        person = ""
        for item in items:
            who = self.name_of(item.scope, item.who)
            personal = client is not None and item.scope in PERSONAL
            person = who if personal and not person else person
            for window in table[item.scope]:
                keys.append(f"{self.tag}:{item.scope}:{who}:{window.window_ms}")
                spec.append(f"{window.limit} {window.window_ms} {'p' if personal else 'h'}")
                windows.append(window)
        args: list[int | str] = [now_ms, secrets.token_hex(8), 0, " ".join(spec)]
        if person:
            # The client's end users of this clock hour: a cap on the windows it can make.
            keys.append(f"{self.tag}:persons:{client}:{now_ms // 3_600_000}")
            cap = self._persons_max.get(client or "", self._persons_max_default)
            args += ["", "", cap, person]

        def settle(result: Any) -> None:
            index = int(result[0])
            if index == 0:
                return
            window = windows[index - 1]
            if len(result) > 2:
                audit("limit_hit", limit="end_user_addresses", **(audit_fields or {}))
                metrics.REFUSALS.labels(
                    metrics.client_label(client), "limit_end_user_addresses"
                ).inc()
                raise RateLimited(
                    int(result[1]) / 1000,
                    "too many different end users from this client this hour "
                    "(OTPSVC_END_USER_ADDRESSES_MAX)",
                    limit="end_user_addresses",
                    scope="client",
                )
            audit("limit_hit", limit=window.scope, window=window.text, **(audit_fields or {}))
            metrics.REFUSALS.labels(metrics.client_label(client), f"limit_{window.scope}").inc()
            raise RateLimited(
                int(result[1]) / 1000,
                f"rate limit exceeded: {window.text} ({window.scope})",
                limit=f"rate_limit_{window.scope}",
                scope="address" if window.scope == "auth_failures" else "client",
            )

        return Gate(self._script, keys, args, settle)
