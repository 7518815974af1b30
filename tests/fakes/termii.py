"""Termii's voice call API (``POST /api/sms/otp/call``) as developers.termii.com documents it."""

from __future__ import annotations

import json
import re
from itertools import count

from werkzeug.wrappers import Request, Response

from tests.fakes.http import FakeServer, Recorded, json_response

# Termii's documented error answers (developers.termii.com/error).
ERRORS = {
    "unauthorized": (401, {"message": "No valid API key provided"}),
    "forbidden": (403, {"message": "API key doesn't have permissions"}),
    "inactive": (400, {"message": "Your account is not active"}),
    "rate_limited": (429, {"message": "Too Many Requests"}),
    "server_error": (500, {"message": "Internal Server Error"}),
    "unprocessable": (422, {"message": "Unprocessable entity"}),
}


class FakeTermii(FakeServer):
    def __init__(self, api_key: str) -> None:
        super().__init__()
        self.api_key = api_key
        self.mode = "ok"
        self._ids = count(453166532802459832)

    @property
    def calls(self) -> list[Recorded]:
        return [r for r in self.requests if r.path == "/api/sms/otp/call"]

    def codes(self) -> list[str]:
        return [str(r.json["code"]) for r in self.calls]

    def last_code(self) -> str:
        return self.codes()[-1]

    def code_for(self, phone: str) -> str:
        """The code of the latest call to ``phone`` (E.164)."""
        digits = phone.lstrip("+")
        calls = [r for r in list(self.calls) if r.json["phone_number"] == digits]
        return str(calls[-1].json["code"])

    @property
    def messages(self) -> list[Recorded]:
        """SMS sent through "Send message" (``POST /api/sms/send``)."""
        return [r for r in self.requests if r.path == "/api/sms/send"]

    def sms(self, request: Request, recorded: Recorded) -> Response:
        """Termii's "Send message": api_key, to (digits), from (sender ID), sms, type plain,
        channel generic or dnd; answers message_id and "Successfully Sent"."""
        try:
            body = json.loads(recorded.body)
        except ValueError:
            return self.violation("body is not JSON")
        fields = {"api_key", "to", "from", "sms", "type", "channel"}
        if not isinstance(body, dict) or set(body) != fields:
            return self.violation(f"fields {sorted(body) if isinstance(body, dict) else body!r}")
        if not re.fullmatch(r"[1-9][0-9]{7,14}", str(body["to"])):
            return self.violation("to must be international digits without '+'")
        if body["type"] != "plain" or body["channel"] not in ("generic", "dnd"):
            return self.violation("type must be plain and channel generic or dnd")
        if not isinstance(body["sms"], str) or not body["sms"]:
            return self.violation("sms must be the text")
        if body["api_key"] != self.api_key:
            return json_response(*reversed(ERRORS["unauthorized"]))
        return json_response(
            {
                "message_id": str(next(self._ids)),
                "message": "Successfully Sent",
                "balance": 9,
                "user": "Termii Test",
            }
        )

    def handle(self, request: Request, recorded: Recorded) -> Response:
        if request.path == "/api/sms/send" and request.method == "POST":
            return self.sms(request, recorded)
        if request.path != "/api/sms/otp/call" or request.method != "POST":
            return self.violation(f"unexpected {request.method} {request.path}")
        if request.mimetype != "application/json":
            return self.violation(f"content type {request.mimetype!r}")
        try:
            body = json.loads(recorded.body)
        except ValueError:
            return self.violation("body is not JSON")
        if not isinstance(body, dict) or set(body) != {"api_key", "phone_number", "code"}:
            return self.violation(f"fields {sorted(body) if isinstance(body, dict) else body!r}")
        if not isinstance(body["phone_number"], str) or not re.fullmatch(
            r"[1-9][0-9]{7,14}", body["phone_number"]
        ):
            return self.violation("phone_number must be international digits without '+'")
        code = body["code"]
        # "numeric and length must be between 4 and 8 digits"
        if isinstance(code, bool) or not isinstance(code, int) or not 1000 <= code <= 99999999:
            return self.violation(f"code must be a 4-8 digit number, got {type(code).__name__}")
        mode = "unauthorized" if body["api_key"] != self.api_key else self.mode
        if mode in ERRORS:
            status, payload = ERRORS[mode]
            return json_response(payload, status)
        if self.mode == "echo_number":
            message = f"Invalid destination +{body['phone_number']} for code {code}"
            return json_response({"message": message}, 400)
        if self.mode == "not_json":
            return Response("<html>server error</html>", status=500, mimetype="text/html")
        if self.mode in ("bad_gateway", "gateway_timeout"):
            status = 502 if self.mode == "bad_gateway" else 504
            return Response("<html>gateway error</html>", status=status, mimetype="text/html")
        message_id = str(next(self._ids))
        return json_response(
            {
                "code": "ok",
                "message_id": message_id,
                "pinId": "29ae67c2-c8e1-4165-8a51-8d3d7c298081",
                "message": "Successfully Sent",
                "balance": 77.5,
                "user": "Termii Test",
            }
        )
