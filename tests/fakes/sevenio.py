"""seven.io's ``POST /voice`` as its documentation and clients describe it.

The return code is in the body: JSON ``success`` (with ``json=1``) or a bare code such as ``900``,
with HTTP 200 either way.
"""

from __future__ import annotations

import re
from itertools import count

from werkzeug.wrappers import Request, Response

from tests.fakes.http import FakeServer, Recorded, json_response


class FakeSevenio(FakeServer):
    def __init__(self, api_key: str) -> None:
        super().__init__()
        self.api_key = api_key
        #: "ok", "plain" (text answer), a return code to answer bare (e.g. "900"), or "http500".
        self.mode = "ok"
        self._ids = count(1384013)

    @property
    def calls(self) -> list[Recorded]:
        return [r for r in self.requests if r.path == "/voice"]

    @property
    def messages(self) -> list[Recorded]:
        """SMS sent (``POST /sms``: the same form fields and answers as a call)."""
        return [r for r in self.requests if r.path == "/sms"]

    def handle(self, request: Request, recorded: Recorded) -> Response:
        if request.method != "POST" or request.path not in ("/voice", "/sms"):
            return self.violation(f"unexpected {request.method} {request.path}")
        form = recorded.form
        if request.headers.get("X-Api-Key") != self.api_key:
            return Response("900", mimetype="text/plain")
        if not re.fullmatch(r"\+?[1-9][0-9]{6,14}", form.get("to", "")):
            return self.violation("to must be a phone number")
        if not form.get("text") or len(form["text"]) > 10_000:
            return self.violation("text missing or longer than 10000")
        if "from" in form and not 1 <= len(form["from"]) <= 16:
            return self.violation("from longer than 16")
        unknown = set(form) - {"to", "text", "from", "json", "foreign_id", "ringtime"}
        if unknown:
            return self.violation(f"unknown fields {sorted(unknown)}")
        if self.mode == "http500":
            return Response("Internal Server Error", status=500)
        if self.mode.isdigit():
            return Response(self.mode, mimetype="text/plain")
        if self.mode.startswith('"'):
            return Response(self.mode, mimetype="application/json")
        message_id = next(self._ids)
        if self.mode == "plain" or form.get("json") != "1":
            return Response(f"100\n{message_id}\n0.045", mimetype="text/plain")
        return json_response(
            {
                "success": "100",
                "total_price": 0.045,
                "balance": 3509.236,
                "debug": False,
                "messages": [
                    {
                        "id": message_id,
                        "sender": form.get("from", "otpsvc"),
                        "recipient": form["to"],
                        "text": form["text"],
                        "price": 0.045,
                        "success": True,
                        "error": None,
                        "error_text": None,
                    }
                ],
            }
        )
