"""A real HTTP server on a free loopback port, run in a thread, recording every request."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    query: dict[str, str] = field(default_factory=dict)

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class FakeServer:
    """Subclasses implement ``handle``; ``delay`` slows answers, ``hang`` holds them till close."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.violations: list[str] = []
        self.delay = 0.0
        self.hang = False
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._server = make_server("127.0.0.1", 0, self._app, threaded=True)
        self.port = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def violation(self, text: str) -> Response:
        """The client broke the documented request shape: remember it and answer 400."""
        self.violations.append(text)
        return Response(json.dumps({"message": text}), status=400, mimetype="application/json")

    def handle(self, request: Request, recorded: Recorded) -> Response:
        raise NotImplementedError

    def _app(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        recorded = Recorded(
            method=request.method,
            path=request.path,
            headers=dict(request.headers),
            body=request.get_data(),
            query=dict(request.args),
        )
        with self._lock:
            self.requests.append(recorded)
        if self.hang:
            self._release.wait(60)
        elif self.delay:
            time.sleep(self.delay)
        return self.handle(request, recorded)(environ, start_response)

    def close(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()


def json_response(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")
