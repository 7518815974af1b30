"""otpsvc: phone verification by one-time codes read out in a voice call."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from otpsvc.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    # The web app is loaded when asked for, not by every ``otpsvc`` command.
    if name == "create_app":
        from otpsvc.app import create_app

        return create_app
    raise AttributeError(f"module 'otpsvc' has no attribute {name!r}")
