"""The docs site: every alert has a runbook page that the site builds, and its runbook_url
points there."""

from __future__ import annotations

import os
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
