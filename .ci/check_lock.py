"""Print one line saying whether this environment holds exactly the versions a lock pins.

Usage: python .ci/check_lock.py requirements-dev.lock. Exit 1 when a pinned package is missing
or at another version, or when a package the lock does not know is installed (the project
itself excepted).
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

PIN = re.compile(r"^([A-Za-z0-9_.-]+)==([^\s;]+)", re.MULTILINE)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main(lock: Path) -> int:
    pinned = {canonical(name): version for name, version in PIN.findall(lock.read_text())}
    installed = {canonical(d.metadata["Name"]): d.version for d in metadata.distributions()}
    wrong = sorted(
        f"{name} {installed.get(name, 'missing')} (locked {version})"
        for name, version in pinned.items()
        if installed.get(name) != version
    )
    extra = sorted(
        f"{name} {v} (not locked)"
        for name, v in installed.items()
        if name not in pinned and name != "otpsvc"
    )
    if wrong or extra:
        print(f"lock check: FAILED against {lock}: " + "; ".join(wrong + extra))
        return 1
    print(f"lock check: all {len(pinned)} packages installed at the versions {lock} pins")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
