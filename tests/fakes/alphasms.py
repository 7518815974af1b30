"""AlphaSMS ``POST /api/json.php``: HTTP 200 always; errors are text in ``error`` fields."""

from __future__ import annotations

import json

from werkzeug.wrappers import Request, Response

from tests.fakes.http import FakeServer, Recorded, json_response


class FakeAlphasms(FakeServer):
    def __init__(self, api_key: str) -> None:
        super().__init__()
        self.api_key = api_key
        #: "ok", "item_error" (the item is refused), or "server_error".
        self.mode = "ok"

    @property
    def calls(self) -> list[Recorded]:
        return [r for r in self.requests if r.path == "/api/json.php" and _type(r) == "voice"]

    @property
    def messages(self) -> list[Recorded]:
        """SMS items (``type: sms``)."""
        return [r for r in self.requests if r.path == "/api/json.php" and _type(r) == "sms"]

    def handle(self, request: Request, recorded: Recorded) -> Response:
        if request.method != "POST" or request.path != "/api/json.php":
            return self.violation(f"unexpected {request.method} {request.path}")
        if request.mimetype != "application/json":
            # "considered invalid even if it has valid JSON" without the header
            return json_response({"success": False, "error": "Invalid request"})
        body = json.loads(recorded.body)
        if body.get("auth") != self.api_key:
            return json_response({"success": False, "error": "Access denied"})
        items = body.get("data")
        if not isinstance(items, list) or len(items) != 1:
            return self.violation("data must hold one item")
        item = items[0]
        if item.get("type") == "sms":
            # docs/api/json/send_sms.md: type, id, phone, sms_signature, sms_message required.
            if not {"type", "id", "phone", "sms_signature", "sms_message"} <= set(item):
                return self.violation(f"sms item fields {sorted(item)}")
            if set(item) - {"type", "id", "phone", "sms_signature", "sms_message", "short_link"}:
                return self.violation(f"sms item fields {sorted(item)}")
            if not isinstance(item["id"], int) or not isinstance(item["phone"], int):
                return self.violation("id and phone must be integers")
            return json_response(
                {
                    "success": True,
                    "data": [
                        {
                            "success": True,
                            "data": {"id": item["id"], "msg_id": 987654321, "data": 1, "parts": 1},
                        }
                    ],
                }
            )
        if set(item) != {"type", "id", "phone", "message", "voice", "dtmf"}:
            return self.violation(f"item fields {sorted(item)}")
        if item["type"] != "voice" or not isinstance(item["id"], int):
            return self.violation("type must be voice and id an integer")
        if not isinstance(item["phone"], int) or not isinstance(item["dtmf"], bool):
            return self.violation("phone must be an integer and dtmf a boolean")
        if set(item["voice"]) != {"gender", "language", "name"}:
            return self.violation("voice needs gender, language and name")
        if self.mode == "server_error":
            return Response("<html>500</html>", status=500, mimetype="text/html")
        if self.mode == "bad_gateway":
            return Response("<html>502</html>", status=502, mimetype="text/html")
        if self.mode == "item_error":
            return json_response(
                {"success": True, "data": [{"success": False, "error": "Error in Alpha-name"}]}
            )
        flag: bool | int = 1 if self.mode == "integer_success" else True
        return json_response(
            {
                "success": flag,
                "data": [
                    {
                        "success": flag,
                        "data": {"id": item["id"], "msg_id": 123456789, "data": 1, "parts": 1},
                    }
                ],
            }
        )


def _type(recorded: Recorded) -> str:
    try:
        return str(json.loads(recorded.body)["data"][0]["type"])
    except (ValueError, KeyError, IndexError, TypeError):
        return ""
