"""An app's webhook endpoint, for the events a worker delivers."""

from __future__ import annotations

import json
from typing import Any

from werkzeug.wrappers import Request, Response

from tests.fakes.http import FakeServer, Recorded


class Receiver(FakeServer):
    """Answers the scripted statuses in turn, then 200."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        super().__init__()
        self.statuses = list(statuses or [])

    def handle(self, request: Request, recorded: Recorded) -> Response:
        status = self.statuses.pop(0) if self.statuses else 200
        return Response("", status=status)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(r.body) for r in self.requests]
