"""The closed set of voice providers: name -> settings schema and factory.

Adding a provider is one module, one line here and one fake server in the tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from marshmallow import Schema

from otpsvc.dev.inbox import CallInbox
from otpsvc.voice.alphasms import AlphasmsProvider, AlphasmsSettingsSchema
from otpsvc.voice.base import Speech, Timeouts, VoiceProvider
from otpsvc.voice.cequens import CequensProvider, CequensSettingsSchema
from otpsvc.voice.console import ConsoleProvider
from otpsvc.voice.sevenio import SevenioProvider, SevenioSettingsSchema
from otpsvc.voice.termii import TermiiProvider, TermiiSettingsSchema


@dataclass(frozen=True)
class ProviderContext:
    """What every provider factory may use besides its own settings."""

    timeouts: Timeouts
    speech: Speech
    public_url: str | None
    inbox: CallInbox | None


@dataclass(frozen=True)
class ProviderSpec:
    settings_schema: type[Schema] | None
    factory: Callable[[Any, ProviderContext], VoiceProvider]
    dev_only: bool = False
    #: The provider calls back on URLs of this service, so OTPSVC_PUBLIC_URL is required.
    needs_public_url: bool = False
    #: The provider sends SMS too (an escalation ladder's ``sms:`` step).
    sms: bool = False


def _console(_: Any, ctx: ProviderContext) -> VoiceProvider:
    if ctx.inbox is None:
        raise RuntimeError("the console provider needs the dev-mode call inbox")
    return ConsoleProvider(ctx.inbox, ctx.speech, ctx.public_url)


def _cequens(settings: Any, ctx: ProviderContext) -> VoiceProvider:
    if ctx.public_url is None:
        raise RuntimeError("the cequens provider needs OTPSVC_PUBLIC_URL")
    return CequensProvider(settings, ctx.timeouts, ctx.speech, ctx.public_url)


PROVIDERS: dict[str, ProviderSpec] = {
    "console": ProviderSpec(settings_schema=None, factory=_console, dev_only=True, sms=True),
    "termii": ProviderSpec(
        settings_schema=TermiiSettingsSchema,
        factory=lambda settings, ctx: TermiiProvider(settings, ctx.timeouts),
        sms=True,
    ),
    "sevenio": ProviderSpec(
        settings_schema=SevenioSettingsSchema,
        factory=lambda settings, ctx: SevenioProvider(settings, ctx.timeouts, ctx.speech),
        sms=True,
    ),
    "cequens": ProviderSpec(
        settings_schema=CequensSettingsSchema, factory=_cequens, needs_public_url=True
    ),
    "alphasms": ProviderSpec(
        settings_schema=AlphasmsSettingsSchema,
        factory=lambda settings, ctx: AlphasmsProvider(settings, ctx.timeouts, ctx.speech),
        sms=True,
    ),
}


def build_providers(
    names: tuple[str, ...], settings: dict[str, Any], ctx: ProviderContext
) -> dict[str, VoiceProvider]:
    """One provider instance per configured name, each with its validated settings."""
    return {name: PROVIDERS[name].factory(settings.get(name), ctx) for name in names}
