"""requirements.lock, which the image installs from, matches pyproject.toml: every dependency is
pinned, inside the range pyproject.toml allows."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9_.-]+)==([^\s;]+)", re.MULTILINE)


def test_every_dependency_is_pinned_within_its_range():
    """Regenerate with: pip-compile --strip-extras --no-emit-index-url --no-emit-find-links
    --output-file requirements.lock pyproject.toml (pip-tools)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {
        canonicalize_name(name): version
        for name, version in PIN.findall((ROOT / "requirements.lock").read_text())
    }
    for line in project["dependencies"]:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not in requirements.lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {requirement.name}=={pins[name]}, outside {line!r}"
        )
