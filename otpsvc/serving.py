"""gunicorn pieces of ``otpsvc serve`` that are code rather than settings.

:class:`RedactingLogger` keeps callback tokens out of the access log: a CEQUENS callback URL
carries a token that can report a call's status or a key press, so a log reader must not get it.
"""

from __future__ import annotations

import re
from typing import Any

from gunicorn.glogging import Logger

#: A token in a callback path: ``/webhooks/cequens/<token>/...``.
CALLBACK_TOKEN = re.compile(r"(/webhooks/cequens/)[^/?\s]+")


def redact(text: str) -> str:
    return CALLBACK_TOKEN.sub(r"\1[token]", text)


class RedactingLogger(Logger):  # type: ignore[misc]
    """gunicorn's logger, with callback tokens replaced by ``[token]`` in every access atom."""

    def atoms(self, resp: Any, req: Any, environ: Any, request_time: Any) -> dict[str, Any]:
        atoms: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        return {k: redact(v) if isinstance(v, str) else v for k, v in atoms.items()}
