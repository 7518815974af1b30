"""The image's HEALTHCHECK: ``python -m otpsvc.healthcheck [HEARTBEAT_FILE]``.

One image runs both of otpsvc's processes, so the check judges whichever this container runs:
``otpsvc serve`` is healthy while ``GET /healthz`` on ``PORT`` (8080) answers 200, and
``otpsvc worker`` while its heartbeat file (its ``--heartbeat``; ``/tmp/worker-alive``, as the
worker Deployment passes it, by default) was touched in the last 30 seconds. Exit 0 when
healthy, 1 otherwise.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.request
from pathlib import Path

#: Where the worker Deployment has ``otpsvc worker --heartbeat`` write.
HEARTBEAT = Path("/tmp/worker-alive")  # noqa: S108 - the container's own in-memory /tmp
#: A heartbeat older than this is a stuck worker (it is touched every second while Redis
#: answers; the worker Deployment's liveness probe uses the same age).
MAX_AGE_SECONDS = 30.0


def healthy(port: str, heartbeat: Path) -> bool:
    try:
        url = f"http://127.0.0.1:{int(port)}/healthz"
        with urllib.request.urlopen(url, timeout=2) as answer:
            return bool(answer.status == 200)
    except (OSError, ValueError):
        pass
    try:
        return time.time() - heartbeat.stat().st_mtime < MAX_AGE_SECONDS
    except OSError:
        return False


def main(argv: list[str]) -> int:
    heartbeat = Path(argv[0]) if argv else HEARTBEAT
    return 0 if healthy(os.environ.get("PORT", "8080"), heartbeat) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
