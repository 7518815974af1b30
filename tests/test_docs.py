"""The docs site: every alert has a runbook page that the site builds, and its runbook_url
points there."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def _alerts() -> list[dict]:
    document = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


def _site_url() -> str:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    return str(config["site_url"])


def test_every_alert_has_a_runbook_page_its_url_points_at():
    site = _site_url()
    nav = (ROOT / "mkdocs.yml").read_text()
    for rule in _alerts():
        name = rule["alert"]
        page = ROOT / "docs" / "runbooks" / f"{name}.md"
        assert page.exists(), f"no runbook page for {name}"
        text = page.read_text()
        for part in ("## What it means", "## How to confirm", "## What to do", "## How to undo"):
            assert part in text, f"{name}'s runbook has no {part!r}"
        assert rule["annotations"]["runbook_url"] == f"{site}runbooks/{name}/"
        assert f"runbooks/{name}.md" in nav


@pytest.mark.skipif(
    shutil.which("mkdocs", path=str(Path(sys.executable).parent)) is None
    and not os.environ.get("OTPSVC_REQUIRE_MKDOCS"),
    reason="mkdocs is not installed (pip install -e '.[docs]'; CI installs it)",
)
def test_the_site_builds_a_page_for_every_runbook_url(tmp_path):
    mkdocs = Path(sys.executable).parent / "mkdocs"
    built = subprocess.run(
        [str(mkdocs), "build", "--strict", "--quiet", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        check=False,
    )
    assert built.returncode == 0, built.stderr
    site = _site_url()
    for rule in _alerts():
        path = rule["annotations"]["runbook_url"].removeprefix(site)
        assert (tmp_path / "site" / path / "index.html").exists(), path


def test_the_readme_is_a_front_page_with_the_two_set_up_commands_first():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    blocks = re.findall(r"```sh\n(.*?)\n```", text, re.S)
    assert blocks[:2] == [
        "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/otpsvc dev",
        "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/python -m pytest",
    ]


def test_every_page_of_the_guide_is_in_the_sites_navigation_and_the_readme_links_them():
    nav = (ROOT / "mkdocs.yml").read_text()
    readme = (ROOT / "README.md").read_text()
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f" {page.name}" in nav, f"{page.name} is not in mkdocs.yml's nav"
        if page.name != "index.md":
            assert f"(docs/{page.name})" in readme, f"the README does not link {page.name}"


def _blocks(path: Path, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)\n```", path.read_text(), re.S)


@pytest.fixture
def dev_server(tmp_path):  # type: ignore[no-untyped-def]
    """``otpsvc dev`` as the README's first command runs it, on a free port: (base URL, key)."""
    from tests.test_dev_mode import start_dev

    out = (tmp_path / "out.txt").open("w+")
    process, base = start_dev(out)
    try:
        out.flush()
        key = re.search(r"API key: (\S+)", Path(out.name).read_text()).group(1)  # type: ignore[union-attr]
        yield base, key
    finally:
        process.terminate()
        process.wait(20)


def _newest_code(base: str, key: str, phone: str) -> str:
    import requests

    calls = requests.get(
        f"{base}/dev/calls", params={"phone": phone}, headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    ).json()["calls"]  # fmt: skip
    return str(calls[0]["code"])


@pytest.fixture
def backend_example(tmp_path):  # type: ignore[no-untyped-def]
    """docs/backend.md's Python handler, as printed (its URL and key filled in), against
    ``otpsvc dev`` on a Redis of the test's own (to stop), one provider slot (to fill) and three
    calls an hour per account (to reach): (its namespace, the dev server's URL, its key, the
    Redis server)."""
    from otpsvc.dev.redis_server import RedisServer
    from tests.test_dev_mode import start_dev

    redis_server = RedisServer().start()
    out = (tmp_path / "out.txt").open("w+")
    process, base = start_dev(
        out,
        env={
            "OTPSVC_REDIS_URL": redis_server.url,
            "OTPSVC_PROVIDER_CONCURRENCY": "1",
            "OTPSVC_PROVIDER_SLOT_WAIT": "0.2",
            "OTPSVC_VELOCITY_USER": "3 per hour",
        },
    )
    try:
        out.flush()
        key = re.search(r"API key: (\S+)", Path(out.name).read_text()).group(1)  # type: ignore[union-attr]
        [handler] = _blocks(ROOT / "docs" / "backend.md", "python")
        namespace: dict = {}
        exec(compile(handler, "docs/backend.md", "exec"), namespace)  # noqa: S102 - our own docs
        namespace["OTPSVC"] = base
        namespace["HEADERS"] = {"Authorization": f"Bearer {key}"}
        yield namespace, base, key, redis_server
    finally:
        process.terminate()
        process.wait(20)
        redis_server.close()


@pytest.mark.timeout(180)
def test_the_docs_backend_example_is_right_on_every_branch(backend_example):
    """Each answer otpsvc can give a sign-in, met for real: the happy path, a resend too soon,
    a failed call, attempts exhausted, an ended verification, a rate limit, a provider slot
    busy and Redis down."""
    import threading

    import requests

    ns, base, key, redis_server = backend_example
    start, check, refused = ns["start_sign_in"], ns["check_code"], ns["SignInRefused"]
    auth = {"Authorization": f"Bearer {key}"}
    ip = "2001:db8:1:2::17"

    def fault(kind: str, phone: str) -> None:
        body = {"fault": kind, "phone": phone}
        assert requests.post(f"{base}/dev/faults", json=body, headers=auth, timeout=10).ok

    # Approved; a wrong code first; the used verification is over.
    vid = start("+2348031234567", ip, "acct-1")
    code = _newest_code(base, key, "+2348031234567")
    wrong = str((int(code[0]) + 1) % 10) + code[1:]
    assert check(vid, wrong, ip) == "wrong_code"
    assert check(vid, code, ip) == "approved"
    assert check(vid, code, ip) == "expired"
    # A second start within the cooldown: the code on its way is the one to enter.
    first = start("+2348031234568", ip, "acct-2")
    assert start("+2348031234568", ip, "acct-2") == first
    # A call no provider took: no id to keep.
    fault("error", "+2348031234569")
    with pytest.raises(refused) as failed:
        start("+2348031234569", ip, "acct-3")
    assert failed.value.code == "delivery_failed"
    # Five wrong codes: locked, and a new start for the number is refused until it expires.
    vid = start("+2348031234570", ip, "acct-4")
    wrong = str((int(_newest_code(base, key, "+2348031234570")[0]) + 1) % 10) + "0" * 5
    outcomes = [check(vid, wrong, ip) for _ in range(5)]
    assert outcomes == ["wrong_code"] * 4 + ["locked"]
    assert check(vid, wrong, ip) == "locked"
    with pytest.raises(refused) as locked:
        start("+2348031234570", ip, "acct-4")
    assert locked.value.code == "max_attempts_reached"
    assert locked.value.retry_after > 0
    # A limit: the account's fourth call of the hour.
    for n in range(3):
        start(f"+234803999000{n}", ip, "acct-5")
    with pytest.raises(refused) as limited:
        start("+2348039990003", ip, "acct-5")
    assert limited.value.code == "rate_limited"
    assert limited.value.retry_after > 0
    # The only provider slot held by a slow call: the next start is busy, retried, placed.
    fault("slow", "+2348031234571")
    slow = threading.Thread(target=start, args=("+2348031234571", ip, "acct-6"))
    slow.start()
    time.sleep(0.5)
    began = time.monotonic()
    assert start("+2348031234572", ip, "acct-7")
    assert time.monotonic() - began > 1.0  # it waited out providers_busy
    slow.join(15)
    busy = requests.get(f"{base}/metrics", timeout=10).text
    assert re.search(r'otpsvc_refusals_total\{[^}]*reason="providers_busy"[^}]*\} [1-9]', busy)
    # Redis down: the start is retried, then refused; the check is refused, never approved.
    vid = start("+2348031234573", ip, "acct-8")
    redis_server.stop()
    try:
        with pytest.raises(refused) as down:
            start("+2348031234574", ip, "acct-9")
        assert down.value.code == "store_unavailable"
        with pytest.raises(refused) as unchecked:
            check(vid, "000000", ip)
        assert unchecked.value.code == "store_unavailable"
    finally:
        redis_server.start()


def test_the_curl_examples_of_the_readme_and_the_docs_run_against_otpsvc_dev(dev_server):
    base, key = dev_server
    env = {**os.environ, "KEY": key, "OTPSVC_KEY": key}

    def run(command: str) -> dict:
        command = command.replace("http://127.0.0.1:8080", base).replace(
            "https://otp.internal.example.com", base
        )
        done = subprocess.run(
            ["bash", "-c", command], env=env, capture_output=True, text=True, check=True
        )
        return json.loads(done.stdout)

    tour = [b for b in _blocks(ROOT / "README.md", "sh") if "curl" in b]
    started = run(tour[0].split("\n# ", 1)[0])
    assert started["status"] == "pending"
    code = _newest_code(base, key, "+2348031234567")
    check = tour[1].split("\n# ", 1)[0].replace("3f2a...", started["id"]).replace("482913", code)
    assert run(check) == {"id": started["id"], "status": "approved", "valid": True}
    [from_docs] = _blocks(ROOT / "docs" / "backend.md", "sh")
    assert run(from_docs)["status"] == "pending"


def test_every_runbook_gives_a_query_or_a_command_to_confirm_it():
    """The fire drill (tests/test_alert_drill.py) runs these while the alert fires."""
    for rule in _alerts():
        text = (ROOT / "docs" / "runbooks" / f"{rule['alert']}.md").read_text()
        confirm = text.split("## How to confirm", 1)[1].split("\n## ", 1)[0]
        assert re.search(r"```(promql|sh)\n", confirm), rule["alert"]


def _error_classes() -> set[tuple[str, int]]:
    from otpsvc import errors

    def below(cls: type) -> list[type]:
        return [c for s in cls.__subclasses__() for c in (s, *below(s))]

    # RetryLater is the base of the refusals that pass, never raised itself.
    return {(c.code, c.status) for c in below(errors.OtpError) if c is not errors.RetryLater}


def test_the_error_table_is_every_code_the_server_answers(api):
    """docs/api.md's table of codes: every error class of otpsvc/errors.py, and the codes of
    the HTTP layer, each as the server answers it."""
    text = (ROOT / "docs" / "api.md").read_text()
    table = {(c, int(s)) for c, s in re.findall(r"^\| `([a-z_]+)` \| (\d{3}) \|", text, re.M)}
    auth = {"Authorization": f"Bearer {api.key}"}
    client = api.client
    http = {
        client.post("/otp/start", data="{", content_type="application/json", headers=auth),
        client.get("/otp/check", headers=auth),
        client.post("/otp/start", data="x" * 20000, content_type="application/json", headers=auth),
        client.post("/otp/start", data="phone=1", headers=auth),
    }
    answered = {(r.get_json()["code"], r.status_code) for r in http}
    assert answered == {
        ("bad_request", 400),
        ("method_not_allowed", 405),
        ("payload_too_large", 413),
        ("unsupported_media_type", 415),
    }
    from otpsvc.api import problems

    with api.app.test_request_context():
        bug = problems._on_unexpected(RuntimeError("a bug"))
    internal = {(bug.get_json()["code"], bug.status_code)}
    assert table == _error_classes() | answered | internal
