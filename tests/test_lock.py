"""The locks match pyproject.toml: requirements.lock (the image's runtime set) and
requirements-dev.lock (what CI and developers install: the runtime set, the test, lint, docs and
speech extras, the build backend) pin every dependency inside its range, and agree with each
other. Regenerate both with ``bash .ci/lock`` (docs/development.md)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9_.-]+)==([^\s;]+)", re.MULTILINE)
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: The extras CI installs (.ci/run); ``otel`` is an operator's choice, not CI's.
LOCKED_EXTRAS = ("test", "lint", "docs", "speech")


def pins(lock: str) -> dict[str, str]:
    return {
        canonicalize_name(name): version for name, version in PIN.findall((ROOT / lock).read_text())
    }


def assert_pinned_within(requirements: list[str], locked: dict[str, str], lock: str) -> None:
    for line in requirements:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{requirement.name} is not in {lock}"
        assert requirement.specifier.contains(locked[name], prereleases=True), (
            f"{lock} pins {requirement.name}=={locked[name]}, outside {line!r}"
        )


def test_every_dependency_is_pinned_within_its_range():
    """Every runtime dependency is pinned in requirements.lock inside its pyproject range."""
    assert_pinned_within(
        PYPROJECT["project"]["dependencies"], pins("requirements.lock"), "requirements.lock"
    )


@pytest.mark.parametrize("extra", LOCKED_EXTRAS)
def test_every_extra_ci_installs_is_pinned_within_its_range(extra):
    """Each extra CI installs is pinned in requirements-dev.lock inside its pyproject range."""
    assert_pinned_within(
        PYPROJECT["project"]["optional-dependencies"][extra],
        pins("requirements-dev.lock"),
        "requirements-dev.lock",
    )


def test_the_build_backend_and_pip_are_locked_for_ci():
    """The build backend and pip CI runs are pinned too, inside the ranges that ask for them."""
    locked = pins("requirements-dev.lock")
    assert_pinned_within(PYPROJECT["build-system"]["requires"], locked, "requirements-dev.lock")
    assert "pip" in locked


def test_the_dev_lock_runs_the_same_runtime_versions_as_the_image():
    """What CI tests is what the image ships: every runtime pin is the same in both locks."""
    runtime, dev = pins("requirements.lock"), pins("requirements-dev.lock")
    differ = {name: (v, dev.get(name)) for name, v in runtime.items() if dev.get(name) != v}
    assert not differ, f"requirements-dev.lock differs from requirements.lock: {differ}"
