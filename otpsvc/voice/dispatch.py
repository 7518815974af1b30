"""Choosing providers for a call and failing over between them.

A route is the ordered list of providers for the phone's country (``OTPSVC_ROUTES``, else
``OTPSVC_PROVIDERS``). Providers whose circuit is open are skipped. A definite failure (refused
connection, HTTP error, provider error code) moves on to the next provider. An ambiguous one (the
request went out and no answer came back, or a gateway in front of the provider answered 502 or
504) stops here: the call may be ringing, and a second call to a person's phone is a visible bug.
That send is reported with delivery status ``unknown``; the person can ask for a new call once the
resend cooldown has passed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Protocol

from otpsvc import metrics
from otpsvc.telemetry import span
from otpsvc.voice.base import CallRequest, CallResult, ProviderError, VoiceProvider

log = logging.getLogger("otpsvc.voice")


class DeliveryError(Exception):
    """Every provider of the route failed definitely or was skipped; ``errors`` says why."""

    def __init__(self, errors: Sequence[ProviderError]) -> None:
        self.errors = tuple(errors)
        self.last_provider = errors[-1].provider if errors else ""
        super().__init__("; ".join(str(e) for e in errors) or "no provider configured")


class NoRoute(Exception):
    """No configured provider can serve this call (keypress mode needs key-press reports, match
    mode two keys collected and reported together)."""


class Bulkhead:
    """At most ``size`` calls of one worker waiting on providers at once.

    Past it, a start may wait up to ``wait`` seconds for a slot, but only ``waiters`` starts at
    once: a provider call ends within a second or two, so a worker whose slots are full for a
    moment (connections stick to one worker while another has slots free) does not refuse what
    it could serve, and the threads left over stay free for checks, webhooks and probes. A start
    that finds no slot in time, or no room to wait, is refused."""

    def __init__(self, size: int, *, wait: float = 0.0, waiters: int = 0) -> None:
        self.size = size
        self.wait = wait
        self._slots = threading.BoundedSemaphore(size)
        self._waiting = threading.BoundedSemaphore(waiters) if waiters > 0 else None

    @contextmanager
    def slot(self) -> Iterator[bool]:
        """Yields True holding a slot, False when none came (nothing is held then)."""
        held = self._slots.acquire(blocking=False)
        if not held and self._waiting is not None and self._waiting.acquire(blocking=False):
            try:
                held = self._slots.acquire(timeout=self.wait)
            finally:
                self._waiting.release()
        try:
            yield held
        finally:
            if held:
                self._slots.release()


class Breaker(Protocol):
    def open_until(self, names: Sequence[str]) -> dict[str, int]: ...

    def record_failure(self, name: str, now_ms: int) -> int: ...


class Dispatcher:
    def __init__(
        self,
        providers: Mapping[str, VoiceProvider],
        default_route: Sequence[str],
        routes: Mapping[int, Sequence[str]],
        breaker: Breaker,
        clock: Callable[[], float],
        bulkhead: Bulkhead,
    ) -> None:
        self.bulkhead = bulkhead
        self.providers = dict(providers)
        self.default_route = tuple(default_route)
        self.routes = {code: tuple(names) for code, names in routes.items()}
        self.breaker = breaker
        self.clock = clock

    def route_for(
        self,
        country_code: int,
        mode: str = "code",
        *,
        routes: Mapping[int, tuple[str, ...]] | None = None,
        default: tuple[str, ...] = (),
    ) -> tuple[VoiceProvider, ...]:
        """The providers a call to ``country_code`` tries, in order, by ``routes`` and
        ``default`` when given (a client's policy), else by the service's."""
        table = self.routes if routes is None else routes
        names = table.get(country_code, default or self.default_route)
        return _keys_route(tuple(self.providers[name] for name in names), mode, "for this number")

    def route_of(
        self, names: Sequence[str], mode: str = "code", channel: str = "voice"
    ) -> tuple[VoiceProvider, ...]:
        """The named providers, in order, once each (an escalation ladder's steps of one
        channel)."""
        route = tuple(self.providers[name] for name in dict.fromkeys(names))
        if channel == "sms":
            if mode != "code":
                raise NoRoute(f"an SMS carries a code: no SMS step for a {mode} verification")
            route = tuple(p for p in route if p.supports_sms)
            if not route:
                raise NoRoute("no provider of the ladder sends SMS")
            return route
        return _keys_route(route, mode, "of the ladder")

    @staticmethod
    def needs_numeric_code(route: Sequence[VoiceProvider]) -> bool:
        """One code serves every provider of a route, so it must suit the strictest."""
        return any(provider.numeric_code for provider in route)

    def place(
        self,
        route: Sequence[VoiceProvider],
        call: CallRequest,
        *,
        may_retry: Callable[[int, str], bool] = lambda attempt, provider: True,
    ) -> CallResult:
        """Place the call with the first provider of the route that takes it.

        ``may_retry(n, provider)`` is asked before the n-th provider request (n >= 2): every
        request can cost money, so each one counts against the budgets, and a spent budget ends
        the failover.
        """
        now_ms = int(self.clock() * 1000)
        open_until = self.breaker.open_until([p.name for p in route])
        errors: list[ProviderError] = []
        attempts = 0
        for provider in route:
            if open_until[provider.name] > now_ms:
                errors.append(ProviderError(provider.name, "circuit open: provider cooling off"))
                metrics.PROVIDER_ERRORS.labels(provider.name, "circuit_open").inc()
                continue
            attempts += 1
            if attempts > 1 and not may_retry(attempts, provider.name):
                errors.append(ProviderError(provider.name, "not tried: the call budget is spent"))
                break
            try:
                with (
                    span(
                        f"provider {provider.name}",
                        client=True,
                        **{"otpsvc.provider": provider.name},
                    ),
                    metrics.timed(metrics.PROVIDER_SECONDS, provider=provider.name),
                ):
                    placed = (
                        provider.send_sms(call)
                        if call.channel == "sms"
                        else provider.place_call(call)
                    )
                metrics.CALLS.labels(
                    metrics.client_label(call.client), provider.name, call.country
                ).inc()
                return placed
            except ProviderError as exc:
                metrics.PROVIDER_ERRORS.labels(provider.name, _reason(exc)).inc()
                # Only the provider's own health opens its circuit: one tenant's bad numbers
                # must not cut a single-provider country off for every tenant.
                opened = bool(exc.health and self.breaker.record_failure(provider.name, now_ms))
                if opened:
                    metrics.BREAKER_OPENINGS.labels(provider.name).inc()
                log.warning(
                    "provider failed for verification %s: %s",
                    call.verification_id,
                    exc,
                    extra={"fields": failure_fields(call.verification_id, exc, opened)},
                )
                if opened:
                    log.warning("circuit of provider %s is open", provider.name)
                if exc.ambiguous:
                    return CallResult(provider=provider.name, message_id=None, status="unknown")
                errors.append(exc)
        raise DeliveryError(errors)

    def close(self) -> None:
        for provider in self.providers.values():
            provider.close()


def failure_fields(verification_id: str, error: ProviderError, opened: bool) -> dict[str, object]:
    """A provider failure as log fields, for an operator (and a provider's support) to act on:
    never the number or the code (the provider's text has its digit runs masked)."""
    return {
        "event": "provider_failed",
        "id": verification_id,
        "provider": error.provider,
        "reason": _reason(error),
        "http_status": error.http_status,
        "provider_code": error.provider_code,
        "provider_text": error.provider_text,
        "breaker": "opened" if opened else "unchanged",
    }


def _reason(error: ProviderError) -> str:
    """A bounded word for a provider failure, for the metrics."""
    if error.ambiguous:
        return "ambiguous"
    if error.http_status is not None and error.http_status >= 500:
        return "http_5xx"
    if error.http_status in (401, 403):
        return "auth"
    if error.health:
        return "unavailable"
    return "refused"


def _keys_route(
    route: tuple[VoiceProvider, ...], mode: str, where: str
) -> tuple[VoiceProvider, ...]:
    """The providers of ``route`` that can take a call of ``mode``: a keypress call needs the
    keys pressed reported, a match call two keys collected and reported together."""
    if mode == "keypress":
        route = tuple(p for p in route if p.supports_dtmf)
        if not route:
            raise NoRoute(f"no provider {where} reports key presses")
    elif mode == "match":
        route = tuple(p for p in route if p.supports_match)
        if not route:
            raise NoRoute(
                f"no provider {where} collects two keys pressed on a call: match mode is "
                "not available here"
            )
    return route
