"""otpsvc: phone verification by one-time codes read out in a voice call."""

from otpsvc.app import create_app

__all__ = ["create_app"]
