"""The ``otpsvc`` command: the dev server, the production server and the operator's tools.

Every command but ``dev`` works against the configured Redis with the ``OTPSVC_*`` environment,
exactly as the service sees it.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import logging
import os
import re
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import click
import limits
from werkzeug.serving import run_simple

from otpsvc import metrics
from otpsvc.api.health import NO_PERSISTENCE
from otpsvc.app import create_app
from otpsvc.config import (
    NUMBER_TYPES,
    SECRET_SETTINGS,
    Settings,
    environment,
    load_settings,
    setting_variables,
)
from otpsvc.core.audit import audit
from otpsvc.core.keyring import Keyring
from otpsvc.core.ladder import LadderRunner
from otpsvc.core.phones import InvalidPhone, mask_e164, parse_phone
from otpsvc.dev.inbox import CallInbox
from otpsvc.dev.redis_server import RedisServer
from otpsvc.errors import ConfigError, StoreUnavailable
from otpsvc.events import (
    EventQueue,
    EventSettings,
    EventWorker,
    block_ms_for,
    serve_worker_metrics,
)
from otpsvc.listen import sample_codes
from otpsvc.logs import JsonFormatter, ReadableFormatter
from otpsvc.serving import RedactingRequestHandler
from otpsvc.store import VerificationStore, connect
from otpsvc.store.connection import store_guard
from otpsvc.store.migrate import migrate_keys
from otpsvc.store.velocity import KillSwitchMemory, VelocityStore
from otpsvc.telemetry import setup_from_environment
from otpsvc.voice.base import CallRequest, ProviderError
from otpsvc.voice.registry import providers_for
from otpsvc.voice.scripts import SCRIPTS
from otpsvc.voice.templates import FORMS, Spoken, choose_template

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

#: Exit status of a configuration error, as at start-up.
CONFIG_ERROR = 2

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


@click.group()
@click.version_option(metadata.version("otpsvc"), prog_name="otpsvc")
def main() -> None:
    """Phone verification by voice call."""


def _settings() -> Settings:
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


def _audit_to_stderr() -> None:
    logger = logging.getLogger("otpsvc")
    if not logger.handlers:
        handler = _CurrentStderr()
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


@contextmanager
def _redis_errors() -> Iterator[None]:
    try:
        yield
    except StoreUnavailable as exc:
        # What redis-py says names the cause (refused, a timeout, authentication, TLS) and
        # never the URL's password.
        cause = f": {type(exc.__cause__).__name__}: {exc.__cause__}" if exc.__cause__ else ""
        click.echo(f"error: {exc} (OTPSVC_REDIS_URL){cause}", err=True)
        sys.exit(1)


def _store_parts(settings: Settings) -> tuple[Any, VerificationStore, VelocityStore]:
    client = connect(
        settings.redis_url,
        socket_timeout=settings.redis_socket_timeout,
        connect_timeout=settings.redis_connect_timeout,
        tls=settings.redis_tls.options(),
    )
    prefix = settings.redis_prefix
    return client, VerificationStore(client, prefix), VelocityStore(client, prefix)


@main.command()
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
        if events.settings.webhooks or _has_ladder(settings):
            # In dev mode the event worker (and the escalation steps) run inside the dev process.
            ladder = LadderRunner(app.extensions["otpsvc"].service)
            worker = EventWorker(events, name="dev", periodic=[ladder.run_due])
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


@main.command()
def serve() -> None:
    """Run the service under gunicorn, configured by the environment.

    The bundled gunicorn.conf.py honours PORT (8080), WEB_CONCURRENCY (workers) and
    GUNICORN_CMD_ARGS (any other gunicorn option). The settings are checked first, so a bad one
    is one clear message and exit status 2 instead of a worker boot loop.
    """
    _settings()
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
    memory = KillSwitchMemory()
    return lambda: velocity.guard_kill_switch(memory)


def _event_queue(settings: Settings) -> EventQueue:
    client, _, _ = _store_parts(settings)
    return EventQueue(
        client,
        settings.redis_prefix,
        EventSettings.from_settings(settings),
    )


@main.command()
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
    """Deliver events to the apps' webhooks; several workers may run. Stops on SIGTERM/SIGINT."""
    _audit_to_stderr()
    settings = _settings()
    queue = _event_queue(settings)
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

    consumer = EventWorker(
        queue, guard=kill_switch_guard(velocity), periodic=[reload_when_asked, ladder.run_due]
    )
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


@main.group()
def events() -> None:
    """Events that could not be delivered within the retry window."""


@events.command("failed")
def events_failed() -> None:
    """List the events kept as failed: id, client, type, verification, when, last answer."""
    with _redis_errors(), store_guard():
        failed = _event_queue(_settings()).failed()
    for message_id, record in sorted(failed.items(), key=lambda item: item[1]["failed_at"]):
        body = json.loads(record["body"])
        verification = (body.get("data") or {}).get("id") or "-"
        click.echo(
            f"{message_id}  {record['client']}  {body.get('type')}  {verification}  "
            f"{record['failed_at']}  last: {record.get('last_answer', 'unknown')}"
        )
    if not failed:
        click.echo("no failed events")


@events.command("replay")
@click.argument("message_id", required=False)
@click.option("--all", "every", is_flag=True, help="Every failed event (of --client, if given).")
@click.option("--client", "client_name", default=None, help="With --all: this client's only.")
def events_replay(message_id: str | None, every: bool, client_name: str | None) -> None:
    """Queue a failed event again, with the same webhook-id; or, with --all, every one (after a
    receiver's outage). More: docs "Operating", events."""
    if bool(message_id) == every:
        raise click.UsageError("name one MESSAGE_ID, or --all")
    with _redis_errors(), store_guard():
        queue = _event_queue(_settings())
        if message_id:
            if not queue.replay(message_id):
                raise click.ClickException(f"no failed event {message_id}")
            click.echo(f"{message_id} queued again")
            return
        chosen = [
            mid
            for mid, record in queue.failed().items()
            if client_name is None or record["client"] == client_name
        ]
        replayed = sum(queue.replay(mid) for mid in chosen)
    click.echo(f"{replayed} failed events queued again")


@events.command("retry-now")
@click.option("--client", "client_name", default=None, help="This client's events only.")
def events_retry_now(client_name: str | None) -> None:
    """Make every event waiting for its next try due now (a receiver is back after an outage:
    its events need not wait out their back-off). More: docs "Operating", events."""
    with _redis_errors(), store_guard():
        moved = _event_queue(_settings()).retry_now(client_name)
    click.echo(f"{moved} events due now")


#: A number and a code to render scripts with (``otpsvc say``).
SAMPLE_PHONE = "+2348031234567"
SAMPLE_DIGITS = "48291375"


@main.command()
@click.option("--client", "client_name", default=None, help="An API client (default: none).")
@click.option("--locale", default=None, help="One locale (default: every one).")
@click.option("--mode", type=click.Choice(["code", "keypress"]), default="code", show_default=True)
def say(client_name: str | None, locale: str | None, mode: str) -> None:
    """Print exactly what each provider on the client's routes would be sent (text or SSML),
    with a sample code, and which template it comes from."""
    settings = _settings()
    if client_name is not None and client_name not in {c.name for c in settings.clients}:
        raise click.ClickException(f"{client_name!r} is not a client of OTPSVC_API_KEYS")
    own = settings.for_client(client_name or "")
    if locale is not None and locale not in SCRIPTS:
        raise click.ClickException(f"no script for {locale!r}; there are {', '.join(SCRIPTS)}")
    client, _, _ = _store_parts(settings)
    keyring = Keyring(settings.secret_key, settings.argon2, settings.secret_key_fallbacks)
    providers = providers_for(own, CallInbox(client, settings.redis_prefix, keyring.phone_key))
    for language in [locale] if locale else list(SCRIPTS):
        template, source = choose_template(settings.templates, client_name or "", mode, language)
        call = CallRequest(
            verification_id="0" * 36,
            phone=SAMPLE_PHONE,
            code="" if mode == "keypress" else SAMPLE_DIGITS[: own.code_length],
            locale=language,
            mode=mode,
            client=client_name or "",
            brand=own.brand,
            repeats=own.call_repeats,
            minutes=-(-own.code_ttl // 60),
            template=template,
            template_source=source,
        )
        for name, provider in providers.items():
            try:
                text = provider.spoken_text(call)
            except ProviderError as exc:
                text = f"(not sent: {exc})"
            form = FORMS.get(name, "its own words")
            click.echo(
                f"== {client_name or '(every client)'} · {language} · {mode} · {name} "
                f"({form}) · script: {source}"
            )
            click.echo(text if text is not None else "(the provider speaks the code itself)")
            click.echo()


@main.command()
@click.option("--locale", "locales", multiple=True, help="A locale (repeat; default: all).")
@click.option("--codes", default=2, show_default=True, help="Random codes besides the fixed ones.")
@click.option("--length", default=6, show_default=True, type=click.IntRange(4, 8))
@click.option(
    "--templates",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A client file whose code templates are checked too.",
)
@click.option("--client", "client_name", default=None, help="Only this client's templates.")
@click.option("--seed", default=0, show_default=True, help="Picks the random codes (repeatable).")
@click.option("--clean", is_flag=True, help="Clean audio, not through a telephone line.")
@click.option(
    "--gate",
    type=click.FloatRange(0, 1),
    default=None,
    help="Exit 1 unless every locale has this share of checks right (0.9) and every negative "
    "control fails.",
)
def listen(
    locales: tuple[str, ...],
    codes: int,
    length: int,
    templates: Path | None,
    client_name: str | None,
    seed: int,
    clean: bool,
    gate: float | None,
) -> None:
    """The listening test: an offline voice reads each script (plain text and SSML), a
    telephone line degrades it, an offline recognizer writes down what it heard; per code, the
    digits heard in every reading, the pauses, and a verdict. Needs otpsvc[speech], and Debian's
    libttspico-utils and sox."""
    from otpsvc.listen import NOT_CHECKABLE, VOICES, Listener, ListenError, numeral_script

    sources = _listen_sources(templates, client_name)
    try:
        listener = Listener(telephone=not clean)
    except ListenError as exc:
        raise click.ClickException(str(exc)) from exc
    failed_gate = False
    try:
        for locale in locales or tuple(SCRIPTS):
            if locale not in VOICES:
                click.echo(f"{locale}: not checkable here: {NOT_CHECKABLE.get(locale, 'no voice')}")
                continue
            checks = []
            for source, template in [("built-in", None), *sources.get(locale, [])]:
                spoken = Spoken("code", locale, "Acme", 5, template, source)
                for code in sample_codes(length, codes, seed):
                    for form in ("text", "ssml"):
                        check = listener.check(spoken, code, form)
                        checks.append(check)
                        verdict = "ok" if check.verdict else f"FAIL: {check.reason}"
                        click.echo(
                            f"{locale} {form:4} {source} {code}: heard {check.heard!r}; "
                            f"{check.pauses} pauses; {verdict}"
                        )
            right = sum(c.verdict for c in checks)
            rate = right / len(checks)
            bad = "483291"[:length]
            control = listener.judge(
                locale, "text", "negative control", bad, numeral_script(bad, locale), 2
            )
            click.echo(
                f"{locale}: {right} of {len(checks)} checks right ({rate:.0%}"
                + (f", gate {gate:.0%}" if gate is not None else "")
                + "); negative control (the code as one numeral): "
                + ("failed, as it must" if not control.verdict else "PASSED: the test is blind")
            )
            if gate is not None and (rate < gate or control.verdict):
                failed_gate = True
    finally:
        listener.close()
    if failed_gate:
        raise click.ClickException("the listening gate failed")


def _listen_sources(path: Path | None, client_name: str | None) -> dict[str, list[tuple[str, str]]]:
    """Per locale, the code templates of a client file to check: (where from, template)."""
    if path is None:
        return {}
    import tomllib

    document = tomllib.loads(path.read_text(encoding="utf-8"))
    found: dict[str, list[tuple[str, str]]] = {}
    if client_name is None:
        for locale, kinds in document.get("templates", {}).items():
            if "code" in kinds:
                found.setdefault(locale, []).append(("templates", kinds["code"]))
    for name, table in document.get("clients", {}).items():
        if client_name not in (None, name):
            continue
        for locale, kinds in table.get("templates", {}).items():
            if "code" in kinds:
                found.setdefault(locale, []).append((f"clients.{name}", kinds["code"]))
    return found


@main.command("migrate-keys")
def migrate_keys_command() -> None:
    """Move what otpsvc 0.1 stored (four-hex-digit hash tags) to the current key layout: blocks,
    failure caps, pending verifications and their expiry watch. Run once the last 0.1 process is
    gone; running it again is harmless."""
    settings = _settings()
    client, _, _ = _store_parts(settings)
    with _redis_errors(), store_guard():
        done = migrate_keys(client, settings.redis_prefix, settings.event_webhooks)
    click.echo(
        f"moved {done.moved} keys ({done.merged} merged into what the new layout counted, "
        f"{done.superseded} already newer in the new layout); "
        f"{done.watched} pending verifications watched for expiry"
    )


@main.command("check-config")
@click.option("--no-redis", is_flag=True, help="Check the settings only; do not reach Redis.")
def check_config(no_redis: bool) -> None:
    """Validate the settings and print the effective ones, every secret masked; then reach
    Redis and say how it keeps its data.

    Exit status 0; 2 with one message per problem (the same list as at start-up); 1 when Redis
    cannot be reached (``--no-redis`` skips that, and says so).
    """
    settings = _settings()
    for name, value in describe(settings):
        click.echo(f"{name} = {value}")
    for name in settings.unknown:
        click.echo(f"warning: unknown setting {name} is ignored", err=True)
    for warning in settings.warnings:
        click.echo(f"warning: {warning}", err=True)
    if no_redis:
        click.echo("redis: not reached (--no-redis)")
        return
    _, store, _ = _store_parts(settings)
    with _redis_errors():
        store.ping()
        persistence = store.persistence()
    click.echo(f"redis: reachable, persistence {persistence or 'unknown'}")
    if persistence == "none":
        click.echo(f"warning: {NO_PERSISTENCE}", err=True)


#: A URL's password (``scheme://user:password@host...``, one host or several) and credentials in
#: its query (``?password=``, ``?token=``...).
URL_PASSWORD = re.compile(r"(://[^/@:]*:)[^@/]*@")
QUERY_SECRET = re.compile(r"([?&](?:password|passwd|pass|token|secret|key|api_key)=)[^&#]*", re.I)


def masked_url(url: str) -> str:
    """The URL with its password and any credential in its query as ``***``: works on URLs
    ``urlsplit`` cannot read (a Sentinel or Cluster URL with several hosts)."""
    return QUERY_SECRET.sub(r"\1***", URL_PASSWORD.sub(r"\1***@", url))


def _secret_summary(value: Any) -> str:
    """How a secret setting is shown: whether it is set, never what it is."""
    if not value:
        return "none"
    if isinstance(value, Mapping):
        return ", ".join(f"{name}: ***" for name in value)
    if isinstance(value, tuple):
        return f"*** ({len(value)} set)"
    return "*** (set)"


def describe(settings: Settings) -> list[tuple[str, str]]:
    """The effective settings as (variable, shown value); no secret is ever shown."""
    variables = setting_variables()
    variables.update(clients="OTPSVC_API_KEYS", provider_settings="provider settings")
    shown: list[tuple[str, str]] = []
    for item in dataclasses.fields(settings):
        if item.name in ("unknown", "warnings", "client_keys"):
            continue
        value = getattr(settings, item.name)
        if item.name == "client_settings":
            # Each client of the client file: what its table sets, as the client's own
            # settings show it (so masked as the globals are).
            for name, own in value.items():
                keys = settings.client_keys[name] | {"templates"} & set(settings.templates)
                shown += [
                    (f"clients.{name}.{key.removeprefix('OTPSVC_').lower()}", text)
                    for key, text in describe(own)
                    if key.removeprefix("OTPSVC_").lower() in _described(keys)
                ]
            continue
        if item.name == "templates":
            text = ", ".join(
                f"{owner or 'every client'}: {','.join(sorted(locales))}"
                for owner, locales in value.items()
            )
            shown.append(("templates", text or "built-in"))
            continue
        variable = variables.get(item.name, "")
        if item.name == "redis_url":
            text = masked_url(value)
        elif item.name == "event_webhooks":
            text = ", ".join(f"{name}: {masked_url(url)}" for name, url in value.items()) or "none"
        elif variable in SECRET_SETTINGS and item.name not in ("clients", "test_numbers"):
            text = _secret_summary(value)
        elif item.name == "clients":
            text = ", ".join(f"{c.name} ({len(c.key_digests)} key(s))" for c in value)
        elif item.name == "test_numbers":
            text = ", ".join(f"{mask_e164(n.e164)} until {n.last_day}" for n in value) or "none"
        elif item.name == "provider_settings":
            text = ", ".join(f"{name}: {_public(s)}" for name, s in value.items()) or "none"
        elif item.name == "allowed_countries":
            text = "any" if value is None else ",".join(sorted(value))
        elif item.name == "allowed_number_types":
            text = ",".join(sorted(n for n, v in NUMBER_TYPES.items() if v in value))
        elif item.name == "argon2":
            text = (
                f"memory {value.memory_kib} KiB, time {value.time_cost}, lanes {value.parallelism}"
            )
        elif item.name == "routes":
            text = ";".join(f"{code}={','.join(p)}" for code, p in value.items()) or "none"
        else:
            text = (
                ",".join(map(str, sorted(value) if isinstance(value, frozenset) else value))
                if isinstance(value, tuple | frozenset)
                else str(value)
            )
        shown.append((variables.get(item.name) or item.name, text))
    return shown


def _described(keys: set[str] | frozenset[str]) -> set[str]:
    """The names ``describe`` shows a client file's keys under."""
    return {{"event_webhook": "event_webhooks"}.get(key, key) for key in keys}


def _public(provider_settings: Any) -> str:
    """A provider's settings without its secrets: only fields whose names say they are public."""
    if not dataclasses.is_dataclass(provider_settings):
        return "set"
    secret_words = ("key", "secret", "token", "password")
    public = {
        f.name: getattr(provider_settings, f.name)
        for f in dataclasses.fields(provider_settings)
        if not any(word in f.name for word in secret_words)
    }
    return "{" + ", ".join(f"{k}={v}" for k, v in public.items()) + "}"


@main.group()
def calls() -> None:
    """The kill switch: suspend or resume every call, at run time, for every instance."""


def _kill_switch(action: Callable[[Any, VelocityStore], None]) -> None:
    settings = _settings()
    client, _, velocity = _store_parts(settings)
    with _redis_errors(), store_guard():
        action(client, velocity)


def _operator() -> str:
    """Who runs the command, as the OS knows them (the audit line's ``by``)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


REASON = click.option(
    "--reason", default="", help="Why, for the audit log and `otpsvc calls status`."
)


CLIENT = click.option(
    "--client",
    "api_client",
    default=None,
    help="One API client's calls only (a name of OTPSVC_API_KEYS).",
)


def _known_client(name: str | None) -> str | None:
    if name is not None and name not in {c.name for c in _settings().clients}:
        raise click.BadParameter(
            f"{name!r} is not a client of OTPSVC_API_KEYS", param_hint="--client"
        )
    return name


@calls.command()
@REASON
@CLIENT
def suspend(reason: str, api_client: str | None) -> None:
    """Refuse every start (or one client's) with 503 calls_suspended until `otpsvc calls
    resume`. More: docs "Operating", operator commands."""
    _audit_to_stderr()
    by = _operator()
    api_client = _known_client(api_client)

    def run(client: Any, velocity: VelocityStore) -> None:
        velocity.suspend(since=time.time(), by=by, reason=reason, client=api_client)
        audit("kill_switch", action="suspend", by=by, reason=reason, via="cli", client=api_client)

    _kill_switch(run)
    click.echo(f"calls of {api_client} suspended" if api_client else "calls suspended")


@calls.command()
@REASON
@CLIENT
def resume(reason: str, api_client: str | None) -> None:
    """Lift the kill switch, every client's or one client's own (OTPSVC_CALLS_ENABLED=false
    still applies where it is set)."""
    _audit_to_stderr()
    by = _operator()
    api_client = _known_client(api_client)

    def run(client: Any, velocity: VelocityStore) -> None:
        was_on = velocity.resume(api_client)
        audit(
            "kill_switch",
            action="resume",
            by=by,
            reason=reason,
            via="cli",
            was_on=was_on,
            client=api_client,
        )

    _kill_switch(run)
    click.echo(f"calls of {api_client} resumed" if api_client else "calls resumed")


@calls.command()
def status() -> None:
    """Whether calls may be placed, and how much of the call budget is used."""
    settings = _settings()

    def run(client: Any, velocity: VelocityStore) -> None:
        state = velocity.kill_state()
        if not settings.calls_enabled:
            click.echo("calls: suspended by OTPSVC_CALLS_ENABLED=false")
        elif state is not None:
            who = f" by {state['by']}" if state.get("by") else ""
            why = f": {state['reason']}" if state.get("reason") else ""
            click.echo(
                f"calls: suspended by the kill switch since {_utc(int(state['since']))}{who}{why}"
            )
        else:
            click.echo("calls: enabled")
        for name, own in sorted(velocity.suspended_clients().items()):
            who = f" by {own['by']}" if own.get("by") else ""
            why = f": {own['reason']}" if own.get("reason") else ""
            click.echo(f"calls of {name}: suspended since {_utc(int(own['since']))}{who}{why}")
        now_ms = int(time.time() * 1000)
        for item in limits.parse_many(settings.call_budget):
            window = item.get_expiry() * 1000
            key = f"{velocity.tag}:budget:all:{item.get_expiry()}"
            used = client.zcount(key, now_ms - window, "+inf")
            click.echo(f"call budget: {used} of {item.amount} per {item.get_expiry()} s used")

    _kill_switch(run)


def _utc(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


@main.command()
@click.argument("phone")
def unblock(phone: str) -> None:
    """Lift number_blocked, the daily failed-check caps and the slow-down for one number,
    for every client (audited)."""
    _audit_to_stderr()
    try:
        parsed = parse_phone(phone)
    except InvalidPhone as exc:
        raise click.BadParameter(str(exc), param_hint="PHONE") from exc
    settings = _settings()
    keyring = Keyring(settings.secret_key, settings.argon2, settings.secret_key_fallbacks)
    client, store, _ = _store_parts(settings)
    phone_keys = [keyring.phone_key(parsed.e164), *keyring.earlier_phone_keys(parsed.e164)]
    removed = 0
    with _redis_errors(), store_guard():
        for key in phone_keys:
            names = [store.denials_key(key), store.all_failures_key(key), store.slow_key(key)]
            names += [store.failure_key(c.name, key) for c in settings.clients]
            names += [store.deny_key(c.name, key) for c in settings.clients]
            removed += int(client.delete(*names))
    audit("unblock", phone=parsed.masked, removed=removed, by="cli")
    click.echo(f"{parsed.masked}: {'unblocked' if removed else 'nothing to lift'}")
