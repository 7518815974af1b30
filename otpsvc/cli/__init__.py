"""The ``otpsvc`` command: the dev server, the production server and the operator's tools.

Every command but ``dev`` works against the configured Redis with the ``OTPSVC_*`` environment,
exactly as the service sees it. One module per group of commands: :mod:`.serving` (dev, serve,
worker), :mod:`.operator` (calls, events, unblock, migrate-keys), :mod:`.fraud` (the
conversion rule), :mod:`.settings`
(check-config) and :mod:`.tools` (say, listen). Each imports what its commands need when they
run, so ``otpsvc --version`` or ``otpsvc calls status`` does not load the web app.
"""

from __future__ import annotations

from importlib import metadata

import click

from otpsvc.cli import fraud, operator, serving, settings, tools
from otpsvc.cli.serving import kill_switch_guard
from otpsvc.cli.settings import masked_url

__all__ = ["kill_switch_guard", "main", "masked_url"]


@click.group()
@click.version_option(metadata.version("otpsvc"), prog_name="otpsvc")
def main() -> None:
    """Phone verification by voice call. Each command's --help says more; the docs' pages
    "Getting started" (dev), "Deploying" (serve, worker) and "Operating" (the rest)."""


for command in (
    serving.dev,
    serving.serve,
    serving.worker,
    settings.check_config,
    operator.calls,
    operator.events,
    operator.unblock,
    operator.insights,
    fraud.fraud,
    operator.migrate_keys_command,
    tools.say,
    tools.listen,
):
    main.add_command(command)
