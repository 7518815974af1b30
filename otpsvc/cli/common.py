"""What the commands share: the settings as the service loads them, Redis, the audit log."""

from __future__ import annotations

import getpass
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from otpsvc.config import Settings
    from otpsvc.events import EventQueue
    from otpsvc.store import VerificationStore
    from otpsvc.store.velocity import VelocityStore

#: Exit status of a configuration error, as at start-up.
CONFIG_ERROR = 2


def load() -> Settings:
    """The settings, as the service loads them; a bad one is its message and exit status 2."""
    from otpsvc.config import load_settings
    from otpsvc.errors import ConfigError

    try:
        return load_settings()
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(CONFIG_ERROR)


class _CurrentStderr(logging.StreamHandler[Any]):
    """Writes to whatever ``sys.stderr`` is when a line is written, not the one of the first
    command: one process may run several commands (a test runner swaps the stream for each)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def audit_to_stderr() -> None:
    """The audit lines of an operator's command, as JSON on stderr."""
    from otpsvc.logs import JsonFormatter

    logger = logging.getLogger("otpsvc")
    if not logger.handlers:
        handler = _CurrentStderr()
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


@contextmanager
def redis_errors() -> Iterator[None]:
    """Redis not answering: one line naming the cause, exit status 1."""
    from otpsvc.errors import StoreUnavailable

    try:
        yield
    except StoreUnavailable as exc:
        # What redis-py says names the cause (refused, a timeout, authentication, TLS) and
        # never the URL's password.
        cause = f": {type(exc.__cause__).__name__}: {exc.__cause__}" if exc.__cause__ else ""
        click.echo(f"error: {exc} (OTPSVC_REDIS_URL){cause}", err=True)
        sys.exit(1)


def store_parts(settings: Settings) -> tuple[Any, VerificationStore, VelocityStore]:
    """A Redis client as the service makes it, and the stores on it."""
    from otpsvc.store import VerificationStore, connect
    from otpsvc.store.velocity import VelocityStore

    client = connect(
        settings.redis_url,
        socket_timeout=settings.redis_socket_timeout,
        connect_timeout=settings.redis_connect_timeout,
        tls=settings.redis_tls.options(),
    )
    prefix = settings.redis_prefix
    return client, VerificationStore(client, prefix), VelocityStore(client, prefix)


def event_queue(settings: Settings) -> EventQueue:
    from otpsvc.events import EventQueue, EventSettings

    client, _, _ = store_parts(settings)
    return EventQueue(client, settings.redis_prefix, EventSettings.from_settings(settings))


def operator_name() -> str:
    """Who runs the command, as the OS knows them (the audit line's ``by``)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"
