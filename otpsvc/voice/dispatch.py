"""Choosing providers for a call and failing over between them.

A definite failure (refused connection, HTTP error, provider error code) moves on to the next
provider. An ambiguous one (the request went out and no answer came back) stops here: the call may
be ringing, and a second call to a person's phone is a visible bug. That send is reported with
delivery status ``unknown``; the person can ask for a new call once the resend cooldown has passed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from otpsvc.voice.base import CallRequest, CallResult, ProviderError, VoiceProvider

log = logging.getLogger("otpsvc.voice")


class DeliveryError(Exception):
    """Every provider of the route failed definitely; ``errors`` holds each one's failure."""

    def __init__(self, errors: Sequence[ProviderError]) -> None:
        self.errors = tuple(errors)
        self.last_provider = errors[-1].provider if errors else ""
        super().__init__("; ".join(str(e) for e in errors) or "no provider configured")


class Dispatcher:
    def __init__(
        self, providers: Mapping[str, VoiceProvider], default_route: Sequence[str]
    ) -> None:
        self.providers = dict(providers)
        self.default_route = tuple(default_route)

    def route(self) -> tuple[VoiceProvider, ...]:
        return tuple(self.providers[name] for name in self.default_route)

    @staticmethod
    def needs_numeric_code(route: Sequence[VoiceProvider]) -> bool:
        """One code serves every provider of a route, so it must suit the strictest."""
        return any(provider.numeric_code for provider in route)

    def place(self, route: Sequence[VoiceProvider], call: CallRequest) -> CallResult:
        errors: list[ProviderError] = []
        for provider in route:
            try:
                return provider.place_call(call)
            except ProviderError as exc:
                log.warning("provider failed for verification %s: %s", call.verification_id, exc)
                if exc.ambiguous:
                    return CallResult(provider=provider.name, message_id=None, status="unknown")
                errors.append(exc)
        raise DeliveryError(errors)

    def close(self) -> None:
        for provider in self.providers.values():
            provider.close()
