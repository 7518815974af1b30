"""The operator's commands: the kill switch (``calls``), the events (``events``), ``unblock`` and
``migrate-keys``. Each reaches the configured Redis as the service does; each change is an audit
line naming the OS user who ran it. More: the docs' "Operating" page, operator commands."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from otpsvc.cli.common import (
    audit_to_stderr,
    event_queue,
    load,
    operator_name,
    redis_errors,
    store_parts,
)

if TYPE_CHECKING:
    from otpsvc.store.velocity import VelocityStore


@click.group()
def events() -> None:
    """The events to the apps' webhooks: the failed ones, replays, retries now. More: the docs'
    "Operating" page, events."""


@events.command("failed")
def events_failed() -> None:
    """List the events kept as failed: id, client, type, verification, when, last answer.
    More: the docs' "Operating" page, events."""
    from otpsvc.store.connection import store_guard

    with redis_errors(), store_guard():
        failed = event_queue(load()).failed()
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
    receiver's outage). More: the docs' "Operating" page, events."""
    from otpsvc.store.connection import store_guard

    if bool(message_id) == every:
        raise click.UsageError("name one MESSAGE_ID, or --all")
    with redis_errors(), store_guard():
        queue = event_queue(load())
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
    its events need not wait out their back-off). More: the docs' "Operating" page, events."""
    from otpsvc.store.connection import store_guard

    with redis_errors(), store_guard():
        moved = event_queue(load()).retry_now(client_name)
    click.echo(f"{moved} events due now")


@click.command("migrate-keys")
def migrate_keys_command() -> None:
    """Move what otpsvc 0.1 stored (four-hex-digit hash tags) to the current key layout: blocks,
    failure caps, pending verifications and their expiry watch. Run once the last 0.1 process is
    gone; running it again is harmless. More: the docs' "Operating" page, operator commands."""
    from otpsvc.store.connection import store_guard
    from otpsvc.store.migrate import migrate_keys

    settings = load()
    client, _, _ = store_parts(settings)
    with redis_errors(), store_guard():
        done = migrate_keys(client, settings.redis_prefix, settings.event_webhooks)
    click.echo(
        f"moved {done.moved} keys ({done.merged} merged into what the new layout counted, "
        f"{done.superseded} already newer in the new layout); "
        f"{done.watched} pending verifications watched for expiry"
    )


@click.group()
def calls() -> None:
    """The kill switch: suspend or resume every call (or one client's), at run time, for every
    instance. More: the docs' "Operating" page, operator commands."""


def _kill_switch(action: Callable[[Any, VelocityStore], None]) -> None:
    from otpsvc.store.connection import store_guard

    settings = load()
    client, _, velocity = store_parts(settings)
    with redis_errors(), store_guard():
        action(client, velocity)


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
    if name is not None and name not in {c.name for c in load().clients}:
        raise click.BadParameter(
            f"{name!r} is not a client of OTPSVC_API_KEYS", param_hint="--client"
        )
    return name


@calls.command()
@REASON
@CLIENT
def suspend(reason: str, api_client: str | None) -> None:
    """Refuse every start (or one client's) with 503 calls_suspended until `otpsvc calls
    resume`. More: the docs' "Operating" page, operator commands."""
    from otpsvc.core.audit import audit

    audit_to_stderr()
    by = operator_name()
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
    still applies where it is set). More: the docs' "Operating" page, operator commands."""
    from otpsvc.core.audit import audit

    audit_to_stderr()
    by = operator_name()
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
    """Whether calls may be placed, and how much of the call budget is used. More: the docs'
    "Operating" page, operator commands."""
    import limits

    settings = load()

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


@click.command()
@click.argument("phone")
def unblock(phone: str) -> None:
    """Lift number_blocked, the daily failed-check caps and the slow-down for one number,
    for every client (audited). More: the docs' "Operating" page, operator commands."""
    from otpsvc.core.audit import audit
    from otpsvc.core.keyring import Keyring
    from otpsvc.phones import InvalidPhone, parse_phone
    from otpsvc.store.connection import store_guard

    audit_to_stderr()
    try:
        parsed = parse_phone(phone)
    except InvalidPhone as exc:
        raise click.BadParameter(str(exc), param_hint="PHONE") from exc
    settings = load()
    keyring = Keyring(settings.secret_key, settings.argon2, settings.secret_key_fallbacks)
    client, store, _ = store_parts(settings)
    phone_keys = [keyring.phone_key(parsed.e164), *keyring.earlier_phone_keys(parsed.e164)]
    removed = 0
    with redis_errors(), store_guard():
        for key in phone_keys:
            names = [store.denials_key(key), store.all_failures_key(key), store.slow_key(key)]
            names += [store.failure_key(c.name, key) for c in settings.clients]
            names += [store.deny_key(c.name, key) for c in settings.clients]
            removed += int(client.delete(*names))
    audit("unblock", phone=parsed.masked, removed=removed, by="cli")
    click.echo(f"{parsed.masked}: {'unblocked' if removed else 'nothing to lift'}")


SINCE = re.compile(r"\A([1-9][0-9]*)([mhd])\Z")


@click.command()
@click.option("--since", default="24h", show_default=True, help="How far back: 90m, 24h, 30d.")
@click.option(
    "--by",
    "group_by",
    default="",
    help="Groups, comma-separated: country, provider, channel, step, client, prefix, hour, day.",
)
@click.option("--client", "api_client", default=None, help="One client's verifications only.")
@click.option("--json", "as_json", is_flag=True, help="The answer of GET /insights/funnel.")
def insights(since: str, group_by: str, api_client: str | None, as_json: bool) -> None:
    """What verifications cost and how they convert (the funnel of GET /insights/funnel), as a
    table. Counted by `otpsvc worker`. More: the docs' "Money and conversion" page."""
    from otpsvc.core.funnel import BadGrouping, FunnelAsk, kind_for, parse_groups, read_funnel
    from otpsvc.store.rollups import Rollups

    found = SINCE.match(since)
    if not found:
        raise click.BadParameter("a number and m, h or d, such as 24h", param_hint="--since")
    groups = parse_groups(group_by)
    try:
        kind_for(groups)
    except BadGrouping as exc:
        raise click.BadParameter(str(exc), param_hint="--by") from exc
    settings = load()
    _known_client(api_client)
    span_ms = int(found.group(1)) * {"m": 60_000, "h": 3_600_000, "d": 86_400_000}[found.group(2)]
    currency = settings.currency if settings.prices else None
    with redis_errors():
        client, _, _ = store_parts(settings)
        rollups = Rollups(client, settings.redis_prefix, days=settings.insights_days)
        now = int(time.time() * 1000)
        body = read_funnel(
            rollups, FunnelAsk(now - span_ms, now, groups, api_client), now, currency
        )
    if as_json:
        click.echo(json.dumps(body, indent=2))
        return
    click.echo(f"{body['from']} to {body['to']}" + (f", {currency}" if currency else ""))
    click.echo(_table(groups, body["rows"], body["total"]))


FIGURES = (
    ("verifications", "verifications"),
    ("sends", "sends"),
    ("answered", "answered"),
    ("approved", "approved"),
    ("conversion", "conversion"),
    ("spend", "spend"),
    ("cost_per_approval", "per approval"),
)


def _table(groups: tuple[str, ...], rows: list[dict[str, Any]], total: dict[str, Any]) -> str:
    """The rows and their total as aligned columns: the groups left, the figures right."""
    labels = list(groups) or [""]
    heads = [*labels, *(title for _, title in FIGURES), "p50 s", "p95 s"]
    lines = [[str(row[g]) for g in groups] + _figures(row) for row in rows]
    lines.append(["total", *[""] * (len(labels) - 1), *_figures(total)])
    widths = [max(len(c) for c in column) for column in zip(heads, *lines, strict=True)]
    return "\n".join(
        "  ".join(
            cell.ljust(width) if j < len(labels) else cell.rjust(width)
            for j, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()
        for cells in [heads, *lines]
    )


def _figures(row: dict[str, Any]) -> list[str]:
    cells = ["" if row[key] is None else str(row[key]) for key, _ in FIGURES]
    times = row["seconds_to_approval"]
    return cells + ["" if times[q] is None else f"<={times[q]}" for q in ("p50", "p95")]
