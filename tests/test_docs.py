"""The docs site: every alert has a runbook page that the site builds, and its runbook_url
points there."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
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


def test_the_docs_backend_example_runs_against_otpsvc_dev(dev_server):
    """The Python handler of docs/backend.md, as printed (only its URL and key filled in)."""
    base, key = dev_server
    [handler] = _blocks(ROOT / "docs" / "backend.md", "python")
    namespace: dict = {}
    exec(compile(handler, "docs/backend.md", "exec"), namespace)  # noqa: S102 - our own docs
    namespace["OTPSVC"] = base
    namespace["HEADERS"] = {"Authorization": f"Bearer {key}"}
    vid = namespace["start_sign_in"]("+2348031234567", "2001:db8:1:2::17", "acct-42")
    code = _newest_code(base, key, "+2348031234567")
    wrong = str((int(code[0]) + 1) % 10) + code[1:]
    assert namespace["check_code"](vid, wrong, "2001:db8:1:2::17") is False
    assert namespace["check_code"](vid, code, "2001:db8:1:2::17") is True


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
