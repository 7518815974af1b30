"""The voice providers a set of settings names, built: the settings hand the registry what it
needs (the registry knows nothing of the settings)."""

from __future__ import annotations

from otpsvc.config.model import Settings
from otpsvc.dev.inbox import CallInbox
from otpsvc.voice.base import Speech, Timeouts, VoiceProvider
from otpsvc.voice.registry import ProviderContext, build_providers


def providers_for(settings: Settings, inbox: CallInbox | None) -> dict[str, VoiceProvider]:
    """The providers ``settings`` name (a client's, for ``otpsvc say``), as they speak for it."""
    return build_providers(
        settings.all_providers,
        dict(settings.provider_settings),
        ProviderContext(
            timeouts=Timeouts(settings.provider_connect_timeout, settings.provider_read_timeout),
            speech=Speech(brand=settings.brand, repeats=settings.call_repeats),
            public_url=settings.public_url,
            inbox=inbox,
        ),
    )
