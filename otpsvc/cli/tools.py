"""The tools for spoken scripts: ``otpsvc say`` (what each provider would be sent) and
``otpsvc listen`` (the offline listening test). More: the docs' "Listening test" page."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from otpsvc.cli.common import load, store_parts

if TYPE_CHECKING:
    from otpsvc.listen import Listener

#: A number and a code to render scripts with (``otpsvc say``).
SAMPLE_PHONE = "+2348031234567"
SAMPLE_DIGITS = "48291375"


@click.command()
@click.option("--client", "client_name", default=None, help="An API client (default: none).")
@click.option("--locale", default=None, help="One locale (default: every one).")
@click.option(
    "--mode", type=click.Choice(["code", "keypress", "match"]), default="code", show_default=True
)
def say(client_name: str | None, locale: str | None, mode: str) -> None:
    """Print exactly what each provider on the client's routes would be sent (text or SSML),
    with a sample code, and which template it comes from. More: the docs' "Several apps" page,
    templates."""
    from otpsvc.config.providers import providers_for
    from otpsvc.core.keyring import Keyring
    from otpsvc.dev.inbox import CallInbox
    from otpsvc.voice.base import CallRequest, ProviderError
    from otpsvc.voice.scripts import SCRIPTS
    from otpsvc.voice.templates import FORMS, choose_template

    settings = load()
    if client_name is not None and client_name not in {c.name for c in settings.clients}:
        raise click.ClickException(f"{client_name!r} is not a client of OTPSVC_API_KEYS")
    own = settings.for_client(client_name or "")
    if locale is not None and locale not in SCRIPTS:
        raise click.ClickException(f"no script for {locale!r}; there are {', '.join(SCRIPTS)}")
    client, _, _ = store_parts(settings)
    keyring = Keyring(settings.secret_key, settings.argon2, settings.secret_key_fallbacks)
    providers = providers_for(own, CallInbox(client, settings.redis_prefix, keyring.phone_key))
    for language in [locale] if locale else list(SCRIPTS):
        template, source = choose_template(settings.templates, client_name or "", mode, language)
        call = CallRequest(
            verification_id="0" * 36,
            phone=SAMPLE_PHONE,
            code="" if mode != "code" else SAMPLE_DIGITS[: own.code_length],
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


@click.command()
@click.option("--locale", "locales", multiple=True, help="A locale (repeat; default: all).")
@click.option("--codes", default=2, show_default=True, help="Random codes besides the fixed ones.")
@click.option("--length", default=6, show_default=True, type=click.IntRange(4, 8))
@click.option(
    "--templates",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A client file whose templates (code, match, keypress) are checked too.",
)
@click.option("--client", "client_name", default=None, help="Only this client's templates.")
@click.option("--seed", default=0, show_default=True, help="Picks the random codes (repeatable).")
@click.option("--clean", is_flag=True, help="Clean audio, not through a telephone line.")
@click.option(
    "--gate",
    type=click.FloatRange(0, 1),
    default=None,
    help="Exit 1 unless every locale has this share of code checks right (0.9), every script "
    "without a code (match, keypress) is understood, and every negative control fails.",
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
    digits heard in every reading, the pauses, and a verdict; per script without a code
    (match, keypress), the share of its words heard and the keys it names. Needs
    otpsvc[speech], and Debian's libttspico-utils, rhvoice-ukrainian,
    rhvoice-brazilian-portuguese and sox. More: the docs' "Listening test" page."""
    from otpsvc.listen import (
        NOT_CHECKABLE,
        VOICES,
        Listener,
        ListenError,
        numeral_script,
        sample_codes,
    )
    from otpsvc.voice.scripts import SCRIPTS
    from otpsvc.voice.templates import Spoken

    sources = _listen_sources(templates, client_name, "code")
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
            understood = _listen_scripts(listener, locale, templates, client_name)
            if gate is not None and not understood:
                failed_gate = True
    finally:
        listener.close()
    if failed_gate:
        raise click.ClickException("the listening gate failed")


def _listen_scripts(
    listener: Listener, locale: str, templates: Path | None, client_name: str | None
) -> bool:
    """The scripts of ``locale`` that read no code (match, keypress; built in and the client
    file's): each understood, in both forms; and a negative control, the match script read by
    another language's voice, not. True when all went as they must."""
    from otpsvc.voice.templates import Spoken

    checks = []
    for kind in ("match", "keypress"):
        sources = _listen_sources(templates, client_name, kind).get(locale, [])
        for source, template in [("built-in", None), *sources]:
            for form in ("text", "ssml"):
                check = listener.check_script(
                    Spoken(kind, locale, "Acme", 5, template, source), form
                )
                checks.append(check)
                verdict = "ok" if check.verdict else f"FAIL: {check.reason}"
                click.echo(
                    f"{locale} {form:4} {source} {kind} script: heard {check.heard!r}; "
                    f"{check.recall:.0%} of its words; {verdict}"
                )
    other = "de" if locale == "en" else "en"
    control = listener.check_script(Spoken("match", locale, "Acme", 5), "text", voice=other)
    right = sum(c.verdict for c in checks)
    click.echo(
        f"{locale}: {right} of {len(checks)} scripts without a code understood; negative control "
        f"(read by the {other} voice, {control.recall:.0%} of its words): "
        + ("failed, as it must" if not control.verdict else "PASSED: the test is blind")
    )
    return right == len(checks) and not control.verdict


def _listen_sources(
    path: Path | None, client_name: str | None, kind: str
) -> dict[str, list[tuple[str, str]]]:
    """Per locale, the templates of ``kind`` in a client file to check: (where from,
    template)."""
    if path is None:
        return {}
    import tomllib

    document = tomllib.loads(path.read_text(encoding="utf-8"))
    found: dict[str, list[tuple[str, str]]] = {}
    if client_name is None:
        for locale, kinds in document.get("templates", {}).items():
            if kind in kinds:
                found.setdefault(locale, []).append(("templates", kinds[kind]))
    for name, table in document.get("clients", {}).items():
        if client_name not in (None, name):
            continue
        for locale, kinds in table.get("templates", {}).items():
            if kind in kinds:
                found.setdefault(locale, []).append((f"clients.{name}", kinds[kind]))
    return found
