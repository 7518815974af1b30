"""A real HTTP server on a free loopback port, run in a thread, recording every request."""

from __future__ import annotations

import io
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from werkzeug.wrappers import Request, Response


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    query: dict[str, str] = field(default_factory=dict)
    form: dict[str, str] = field(default_factory=dict)
    client_port: int = 0

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class _Handler(BaseHTTPRequestHandler):
    """Turns each HTTP/1.1 request (keep-alive kept) into a WSGI call on the fake."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: without this, Nagle's algorithm and the client's
    # delayed ACK hold every answer for about 40 ms.
    disable_nagle_algorithm = True
    server: _Server

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        path, _, query = self.path.partition("?")
        environ: dict[str, Any] = {
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": str(self.server.server_port),
            "SERVER_PROTOCOL": self.request_version,
            "REMOTE_ADDR": self.client_address[0],
            "REMOTE_PORT": str(self.client_address[1]),
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(length),
            "wsgi.input": io.BytesIO(self.rfile.read(length)),
            "wsgi.url_scheme": "http",
            "wsgi.errors": io.StringIO(),
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            "wsgi.version": (1, 0),
        }
        for name, value in self.headers.items():
            key = "HTTP_" + name.upper().replace("-", "_")
            if key not in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
                environ[key] = value
        response = self.server.fake.dispatch(environ)
        if response is None:  # ``drop``: the request was read, the connection closes unanswered
            self.close_connection = True
            return
        body = response.get_data()
        self.send_response(response.status_code)
        for name, value in response.headers.items():
            if name.lower() not in ("content-length", "connection"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _serve  # noqa: N815 - the names http.server looks up

    def log_message(self, *args: Any) -> None:
        return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    fake: FakeServer


class FakeServer:
    """Subclasses implement ``handle``; ``delay`` slows answers, ``hang`` holds them till close,
    ``drop`` reads each request and closes the connection without an answer."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.violations: list[str] = []
        self.delay = 0.0
        self.hang = False
        self.drop = False
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self.port = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def connections(self) -> int:
        """How many distinct client connections the recorded requests came on."""
        return len({r.client_port for r in self.requests})

    def violation(self, text: str) -> Response:
        """The client broke the documented request shape: remember it and answer 400."""
        self.violations.append(text)
        return Response(json.dumps({"message": text}), status=400, mimetype="application/json")

    def handle(self, request: Request, recorded: Recorded) -> Response:
        raise NotImplementedError

    def dispatch(self, environ: dict[str, Any]) -> Response | None:
        request = Request(environ)
        recorded = Recorded(
            method=request.method,
            path=request.path,
            headers=dict(request.headers),
            body=request.get_data(),
            query=dict(request.args),
            client_port=int(environ.get("REMOTE_PORT") or 0),
        )
        if request.mimetype == "application/x-www-form-urlencoded":
            recorded.form = dict(request.form)
        with self._lock:
            self.requests.append(recorded)
        if self.drop:
            return None
        if self.hang:
            self._release.wait(60)
        elif self.delay:
            time.sleep(self.delay)
        return self.handle(request, recorded)

    def close(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()


def json_response(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")
