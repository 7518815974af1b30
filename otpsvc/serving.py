"""Access-log pieces of ``otpsvc serve`` (gunicorn) and ``otpsvc dev`` (werkzeug).

Both keep secrets out of the access log: a callback URL (CEQUENS's, the dev console's) carries
a token that can report a call's status or a key press, and ``GET /dev/calls?phone=`` carries a
full number; a log reader must get neither.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

from gunicorn.glogging import Logger
from werkzeug.serving import WSGIRequestHandler

from otpsvc.logs import JsonFormatter

#: A token in a callback path: ``/webhooks/cequens/<token>/...``, ``/webhooks/console/<token>``.
CALLBACK_TOKEN = re.compile(r"(/webhooks/(?:cequens|console)/)[^/?\s]+")
#: A number in a query string: ``?phone=%2B2348031234567``.
PHONE_PARAMETER = re.compile(r"([?&]phone=)[^&\s\"]*")


def redact(text: str) -> str:
    return PHONE_PARAMETER.sub(r"\1[number]", CALLBACK_TOKEN.sub(r"\1[token]", text))


class RedactingLogger(Logger):  # type: ignore[misc]
    """gunicorn's logger, its lines as JSON like the service's own, and an access log of JSON
    lines (request id, method, path and query with tokens and numbers redacted, status,
    duration) when an access log is turned on."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        if cfg.accesslog == "/dev/stderr":
            # gunicorn would open /dev/stderr again: a second descriptor with an offset of its
            # own, so when stderr is a regular file (not opened to append) the two overwrite
            # each other's lines. The access log writes to the process's own stderr instead.
            for handler in list(self.access_log.handlers):
                self.access_log.removeHandler(handler)
                handler.close()
            self.access_log.addHandler(logging.StreamHandler(sys.stderr))
        for handler in [*self.error_log.handlers, *self.access_log.handlers]:
            handler.setFormatter(JsonFormatter())

    def atoms(self, resp: Any, req: Any, environ: Any, request_time: Any) -> dict[str, Any]:
        atoms: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        return {k: redact(v) if isinstance(v, str) else v for k, v in atoms.items()}

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        if not (self.cfg.accesslog or self.cfg.logconfig or self.cfg.syslog):
            return
        query = environ.get("QUERY_STRING", "")
        path = environ.get("PATH_INFO", "") + (f"?{query}" if query else "")
        fields = {
            "event": "access",
            "method": environ.get("REQUEST_METHOD", ""),
            "path": redact(path),
            "status": int(str(resp.status).split(None, 1)[0]),
            "duration_ms": round(request_time.seconds * 1000 + request_time.microseconds / 1000, 1),
        }
        request_id = dict(resp.headers).get("X-Request-Id")
        if request_id:
            fields["request_id"] = request_id
        self.access_log.info("access", extra={"fields": fields})


class RedactingRequestHandler(WSGIRequestHandler):
    """The dev server's request handler, with every log line redacted like gunicorn's."""

    def log(self, type: str, message: str, *args: Any) -> None:
        super().log(type, "%s", redact(message % args))
