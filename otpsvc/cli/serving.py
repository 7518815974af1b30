"""Serving: ``otpsvc dev`` (embedded defaults), ``otpsvc serve`` (gunicorn) and ``otpsvc worker``
(events and escalation steps)."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import click

from otpsvc.cli.common import CONFIG_ERROR, audit_to_stderr, event_queue, load

if TYPE_CHECKING:
    from otpsvc.config import Settings
    from otpsvc.core.ladder import LadderRunner
    from otpsvc.events import EventQueue
    from otpsvc.store.velocity import VelocityStore

BANNER = """
otpsvc dev mode on {base} (Redis: {redis})

  Open {base}/dev : every call, live; start, check and inject faults from the page.
  API reference: {base}/docs

API key: {key}
{key_note}
Dev limits (roomier than production's, so test runs do not lock you out): {limits}.
Set the OTPSVC_* variable of a limit to try production's.

  curl -s {base}/otp/start -H 'Authorization: Bearer {key}' \\
       -H 'Content-Type: application/json' -d '{{"phone": "+2348031234567"}}'
  curl -s '{base}/dev/calls?phone=%2B2348031234567&wait=10' -H 'Authorization: Bearer {key}'
  curl -s {base}/otp/check -H 'Authorization: Bearer {key}' \\
       -H 'Content-Type: application/json' -d '{{"id": "<id>", "code": "<code>"}}'
"""

#: glibc allocator settings of ``otpsvc serve`` (see there).
SERVE_ALLOCATOR = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "131072"}

#: Limits of dev mode where not set: production's would lock a developer out after a few test
#: runs (5 calls an hour per number and per account).
DEV_LIMITS = {
    "OTPSVC_VELOCITY_PHONE": "60 per hour;500 per day",
    "OTPSVC_VELOCITY_USER": "60 per hour;500 per day",
    "OTPSVC_VELOCITY_IP": "300 per hour;3000 per day",
    "OTPSVC_VELOCITY_PREFIX": "300 per hour;3000 per day",
    "OTPSVC_RATE_LIMIT_START_IP": "120 per minute",
    "OTPSVC_RATE_LIMIT_CHECK_IP": "300 per minute",
    "OTPSVC_MAX_FAILED_CHECKS_PER_NUMBER": "100",
    "OTPSVC_MAX_FAILED_CHECKS_ALL_CLIENTS": "300",
}


def dev_key_file() -> Path:
    """Where ``otpsvc dev`` keeps its API key, so it stays the same across restarts."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "otpsvc" / "dev-api-key"


def _dev_key(renew: bool) -> tuple[str, Path]:
    """The dev API key from its file, made (and kept, readable by this user only) when there is
    none or ``renew`` asks for a new one."""
    path = dev_key_file()
    if not renew:
        try:
            key = path.read_text(encoding="utf-8").strip()
        except OSError:
            key = ""
        if len(key) >= 24:
            return key, path
    key = secrets.token_urlsafe(24)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(key + "\n")
    return key, path


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--new-key", is_flag=True, help="Make a new dev API key instead of the kept one.")
def dev(host: str, port: int, new_key: bool) -> None:
    """Run on embedded defaults: bundled Redis, console provider, an API key kept across
    restarts (in $XDG_STATE_HOME/otpsvc/dev-api-key), limits roomier than production's.

    Any OTPSVC_* variable already set is kept, so dev mode can also point at a real Redis or
    try production's limits. Stops, with its Redis, on Ctrl-C or SIGTERM. More: the docs'
    "The dev inbox" page.
    """
    from werkzeug.serving import run_simple

    from otpsvc.app import create_app, fold_task
    from otpsvc.config import environment
    from otpsvc.core.ladder import LadderRunner
    from otpsvc.dev.redis_server import RedisServer
    from otpsvc.errors import ConfigError
    from otpsvc.events import EventWorker, block_ms_for
    from otpsvc.logs import ReadableFormatter
    from otpsvc.serving import RedactingRequestHandler
    from otpsvc.telemetry import setup_from_environment

    handler = logging.StreamHandler()
    handler.setFormatter(ReadableFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    # SIGTERM (a process manager, `kill`) unwinds like Ctrl-C, so the bundled Redis stops too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    env = environment()
    server = None
    if "OTPSVC_REDIS_URL" not in env:
        server = RedisServer().start()
        env["OTPSVC_REDIS_URL"] = server.url
    api_key = None
    key_note = ""
    if "OTPSVC_API_KEYS" not in env:
        api_key, key_path = _dev_key(new_key)
        env["OTPSVC_API_KEYS"] = f"dev:{api_key}"
        key_note = f"  (kept in {key_path}: the same after a restart; --new-key makes another)\n"
    for name, limit in DEV_LIMITS.items():
        env.setdefault(name, limit)
    env.setdefault("OTPSVC_SECRET_KEY", secrets.token_urlsafe(32))
    env.setdefault("OTPSVC_PROVIDERS", "console")
    # The console provider's delivery reports come back here, as a provider's webhooks would.
    local = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104
    env.setdefault("OTPSVC_PUBLIC_URL", f"http://{local}:{port}")
    env["OTPSVC_DEV_MODE"] = "true"
    setup_from_environment()
    worker = None
    try:
        app = create_app(env)
        events = app.extensions["otpsvc"].events
        settings = app.extensions["otpsvc"].settings
        rollups = app.extensions["otpsvc"].rollups
        if events.settings.webhooks or _has_ladder(settings) or events.settings.insights:
            # In dev mode the event worker (the escalation steps, the funnel's folding, the
            # conversion rule) runs inside the dev process.
            ladder = LadderRunner(app.extensions["otpsvc"].service)
            tasks = [ladder.run_due, fold_task(rollups)]
            worker = EventWorker(events, name="dev", periodic=tasks)
            block_ms = block_ms_for(app.extensions["otpsvc"].settings.redis_socket_timeout)
            threading.Thread(target=worker.run, args=(block_ms,), daemon=True).start()
        click.echo(
            BANNER.format(
                base=f"http://{host}:{port}",
                redis="bundled" if server else "OTPSVC_REDIS_URL",
                key=api_key or "<a key from OTPSVC_API_KEYS>",
                key_note=key_note,
                limits=(
                    f"{env['OTPSVC_VELOCITY_PHONE']} calls per number, "
                    f"{env['OTPSVC_RATE_LIMIT_START_IP']} starts per address"
                ),
            )
        )
        run_simple(host, port, app, threaded=True, request_handler=RedactingRequestHandler)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(CONFIG_ERROR)
    finally:
        if worker:
            worker.stop()
        if server:
            server.close()


@click.command()
def serve() -> None:
    """Run the service under gunicorn, configured by the environment.

    The bundled gunicorn.conf.py honours PORT (8080), WEB_CONCURRENCY (workers) and
    GUNICORN_CMD_ARGS (any other gunicorn option). The settings are checked first, so a bad one
    is one clear message and exit status 2 instead of a worker boot loop. SIGHUP reads every
    setting again. More: the docs' "Deploying" page.
    """
    load()
    # glibc reads these at start-up, so they are set before gunicorn runs. Without a fixed mmap
    # threshold glibc raises it past argon2's 16 MiB block after the first free, and from then
    # on keeps every freed block in the heap; one arena a core is what threads need here
    # (bench/memory.py measures both). An operator's own value wins.
    for name, value in SERVE_ALLOCATOR.items():
        os.environ.setdefault(name, value)
    config = resources.files("otpsvc").joinpath("gunicorn.conf.py")
    argv = [sys.executable, "-m", "gunicorn", "--config", str(config), "otpsvc.app:create_app()"]
    os.execv(sys.executable, argv)  # noqa: S606 - replaces this process, so signals reach gunicorn


def _has_ladder(settings: Settings) -> bool:
    return any(len(s.ladder) > 1 for s in [settings, *settings.client_settings.values()])


def kill_switch_guard(velocity: VelocityStore) -> Callable[[], None]:
    """What a worker runs on every loop: a suspension outlives a Redis that lost its data."""
    from otpsvc.store.velocity import KillSwitchMemory

    memory = KillSwitchMemory()
    return lambda: velocity.guard_kill_switch(memory)


@click.command()
@click.option(
    "--heartbeat",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A file touched every second while Redis answers (for a liveness probe).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve the worker's Prometheus metrics on this port (GET /metrics; behind "
    "OTPSVC_METRICS_TOKEN when it is set).",
)
@click.option(
    "--metrics-host",
    default="0.0.0.0",  # noqa: S104 - a scrape target: Prometheus reaches the pod's address
    show_default=True,
    help="The address the metrics port listens on.",
)
def worker(heartbeat: Path | None, metrics_port: int | None, metrics_host: str) -> None:
    """Deliver events to the apps' webhooks and take the escalation ladders' steps; several
    workers may run. Stops on SIGTERM/SIGINT; SIGHUP reads every setting again. More: the docs'
    "Deploying" and "Operating" (events) pages."""
    from otpsvc.app import create_app, fold_task, rollups_for
    from otpsvc.core.ladder import LadderRunner
    from otpsvc.events import EventWorker, block_ms_for, serve_worker_metrics
    from otpsvc.store.clock import RedisClock
    from otpsvc.store.velocity import VelocityStore

    audit_to_stderr()
    settings = load()
    queue = event_queue(settings)
    # The guard shares the queue's Redis client: one connection pool per worker process.
    velocity = VelocityStore(queue.redis, settings.redis_prefix)
    # Escalation steps are starts: the service as the API builds it places them.
    ladder = LadderRunner(
        create_app(api=False).extensions["otpsvc"].service, threads=settings.provider_concurrency
    )
    # SIGHUP asks; the loop reloads between two of its steps (not inside a signal handler that
    # may have interrupted a Redis call).
    reload_asked = threading.Event()

    def reload_when_asked() -> None:
        if reload_asked.is_set():
            reload_asked.clear()
            _reload_worker(queue, ladder)

    tasks = [reload_when_asked, ladder.run_due]
    if queue.settings.insights:
        # Fold the outcome entries into the funnel's rollups, and judge by them what converts.
        tasks.append(fold_task(rollups_for(settings, queue.redis, RedisClock(queue.redis))))
    consumer = EventWorker(queue, guard=kill_switch_guard(velocity), periodic=tasks)
    if metrics_port is not None:
        serve_worker_metrics(
            metrics_port,
            lambda: queue.backlog(time.time()),
            host=metrics_host,
            token=settings.metrics_token,
        )
    signal.signal(signal.SIGTERM, lambda *_: consumer.stop())
    signal.signal(signal.SIGHUP, lambda *_: reload_asked.set())
    click.echo(f"event worker {consumer.name} started", err=True)
    try:
        consumer.run(block_ms_for(settings.redis_socket_timeout), heartbeat=heartbeat)
    except KeyboardInterrupt:
        consumer.stop()


def _reload_worker(queue: EventQueue, ladder: LadderRunner) -> None:
    """SIGHUP: every setting read again, the client file included; bad ones are logged and the
    worker goes on with what it had. The webhooks and everything a ladder step obeys (limits,
    countries, budgets, brands, templates, routes, ladders) take effect from the next step: the
    steps are placed by a service built from the new settings, and the old one is closed once
    its steps in flight are done."""
    from otpsvc import metrics
    from otpsvc.app import create_app
    from otpsvc.errors import ConfigError
    from otpsvc.events import EventSettings

    log = logging.getLogger("otpsvc.events")
    try:
        app = create_app(api=False)
    except ConfigError as exc:
        metrics.SETTINGS_REFUSED.set(1)
        log.error("settings refused, the worker keeps its own: %s", "; ".join(exc.problems))
        return
    metrics.SETTINGS_REFUSED.set(0)
    fresh = app.extensions["otpsvc"]
    old = ladder.service
    queue.settings = EventSettings.from_settings(fresh.settings)
    ladder.service = fresh.service
    log.info(
        "settings reloaded: webhooks of %s; ladder steps follow the new settings",
        ", ".join(sorted(queue.settings.webhooks)) or "no client",
    )

    def retire() -> None:
        ladder.drain()
        old.dispatcher.close()
        old.store.redis.close()

    threading.Thread(target=retire, name="retire-settings", daemon=True).start()
