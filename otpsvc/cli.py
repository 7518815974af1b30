"""The ``otpsvc`` command."""

from __future__ import annotations

import logging
import secrets
import sys

import click
from werkzeug.serving import run_simple

from otpsvc.app import create_app
from otpsvc.config import environment
from otpsvc.dev.redis_server import RedisServer
from otpsvc.errors import ConfigError

BANNER = """
otpsvc dev mode on {base} (Redis: {redis})
API key: {key}

  curl -s {base}/otp/start -H 'Authorization: Bearer {key}' \\
       -H 'Content-Type: application/json' -d '{{"phone": "+2348031234567"}}'
  curl -s {base}/dev/calls -H 'Authorization: Bearer {key}'
  curl -s {base}/otp/check -H 'Authorization: Bearer {key}' \\
       -H 'Content-Type: application/json' -d '{{"id": "<id>", "code": "<code>"}}'
"""


@click.group()
def main() -> None:
    """Phone verification by voice call."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
def dev(host: str, port: int) -> None:
    """Run on embedded defaults: bundled Redis, console provider, generated keys.

    Any OTPSVC_* variable already set is kept, so dev mode can also point at a real Redis.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    env = environment()
    server = None
    if "OTPSVC_REDIS_URL" not in env:
        server = RedisServer().start()
        env["OTPSVC_REDIS_URL"] = server.url
    api_key = None
    if "OTPSVC_API_KEYS" not in env:
        api_key = secrets.token_urlsafe(24)
        env["OTPSVC_API_KEYS"] = f"dev:{api_key}"
    env.setdefault("OTPSVC_SECRET_KEY", secrets.token_urlsafe(32))
    env.setdefault("OTPSVC_PROVIDERS", "console")
    env["OTPSVC_DEV_MODE"] = "true"
    try:
        app = create_app(env)
        click.echo(
            BANNER.format(
                base=f"http://{host}:{port}",
                redis="bundled" if server else "OTPSVC_REDIS_URL",
                key=api_key or "<a key from OTPSVC_API_KEYS>",
            )
        )
        run_simple(host, port, app, threaded=True)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    finally:
        if server:
            server.close()
