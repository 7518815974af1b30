"""Access-log pieces of ``otpsvc serve`` (gunicorn) and ``otpsvc dev`` (werkzeug).

Both keep secrets out of the access log: a callback URL (CEQUENS's, the dev console's) carries
a token that can report a call's status or a key press, and ``GET /dev/calls?phone=`` carries a
full number; a log reader must get neither.
"""

from __future__ import annotations

import re
from typing import Any

from gunicorn.glogging import Logger
from werkzeug.serving import WSGIRequestHandler

#: A token in a callback path: ``/webhooks/cequens/<token>/...``, ``/webhooks/console/<token>``.
CALLBACK_TOKEN = re.compile(r"(/webhooks/(?:cequens|console)/)[^/?\s]+")
#: A number in a query string: ``?phone=%2B2348031234567``.
PHONE_PARAMETER = re.compile(r"([?&]phone=)[^&\s\"]*")


def redact(text: str) -> str:
    return PHONE_PARAMETER.sub(r"\1[number]", CALLBACK_TOKEN.sub(r"\1[token]", text))


class RedactingLogger(Logger):  # type: ignore[misc]
    """gunicorn's logger, with callback tokens replaced by ``[token]`` in every access atom."""

    def atoms(self, resp: Any, req: Any, environ: Any, request_time: Any) -> dict[str, Any]:
        atoms: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        return {k: redact(v) if isinstance(v, str) else v for k, v in atoms.items()}


class RedactingRequestHandler(WSGIRequestHandler):
    """The dev server's request handler, with every log line redacted like gunicorn's."""

    def log(self, type: str, message: str, *args: Any) -> None:
        super().log(type, "%s", redact(message % args))
