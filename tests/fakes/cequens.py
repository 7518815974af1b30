"""CEQUENS sign-in and "call with user input", with bearer tokens that expire or are revoked.

Names other than ``sayText`` and ``dtmfCallbackEndpoint`` are the same assumptions the provider
module makes; the fake checks the shape the module sends, so a rename shows up in both.
"""

from __future__ import annotations

import base64
import json
import secrets
import time

from werkzeug.wrappers import Request, Response

from tests.fakes.http import FakeServer, Recorded, json_response

REQUIRED = {
    "recipientNumber",
    "sayText",
    "voiceName",
    "neuralTts",
    "sayTextRepeats",
    "ringingDuration",
    "collectDtmf",
    "statusCallbackEndpoint",
    "metaData",
}
#: Public clients sign in at this path, with the trailing slash; without it the server
#: redirects, and a client that follows no redirects never signs in.
SIGNIN = "/auth/v1/tokens/"


def make_jwt(expires_at: float) -> str:
    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS256'})}.{part({'exp': int(expires_at)})}.{secrets.token_hex(8)}"


class FakeCequens(FakeServer):
    def __init__(self, username: str, api_key: str) -> None:
        super().__init__()
        self.username = username
        self.api_key = api_key
        self.tokens: dict[str, float] = {}
        self.token_lifetime = 3600.0
        self.mode = "ok"
        #: An account whose API names some fields otherwise: {its name: the name above}.
        self.renamed: dict[str, str] = {}

    @property
    def sign_ins(self) -> list[Recorded]:
        return [r for r in self.requests if r.path == SIGNIN]

    @property
    def calls(self) -> list[Recorded]:
        return [r for r in self.requests if r.path == "/voice/v1/calls"]

    def revoke_tokens(self) -> None:
        """Every issued token stops working, as when it expires early or is revoked."""
        self.tokens.clear()

    def handle(self, request: Request, recorded: Recorded) -> Response:
        if request.path == SIGNIN.rstrip("/"):
            return Response("", status=308, headers={"Location": SIGNIN})
        if request.method == "POST" and request.path == SIGNIN:
            body = recorded.json
            if body != {"userName": self.username, "apiKey": self.api_key}:
                return json_response({"replyCode": 1, "replyMessage": "Invalid credentials"}, 401)
            expires = time.time() + self.token_lifetime
            token = make_jwt(expires)
            self.tokens[token] = expires
            return json_response({"replyCode": 0, "data": {"access_token": token}})
        if request.method == "POST" and request.path == "/voice/v1/calls":
            token = request.headers.get("Authorization", "").removeprefix("Bearer ")
            if self.tokens.get(token, 0) < time.time():
                return json_response({"replyCode": 401, "replyMessage": "Unauthorized"}, 401)
            body = recorded.json
            unknown = set(body) & set(self.renamed.values())
            if unknown:
                return self.violation(f"this account does not take {sorted(unknown)}")
            body = {self.renamed.get(name, name): value for name, value in body.items()}
            missing = REQUIRED - set(body)
            if missing:
                return self.violation(f"missing {sorted(missing)}")
            if body["collectDtmf"] and "dtmfCallbackEndpoint" not in body:
                return self.violation("collectDtmf without dtmfCallbackEndpoint")
            recipient = body["recipientNumber"]
            if not isinstance(recipient, str) or not recipient.isdigit():
                return self.violation("recipientNumber must be digits without '+'")
            meta = body["metaData"]
            if not isinstance(meta, dict) or set(meta) != {"key", "value"}:
                return self.violation("metaData must be {key, value}")
            if self.mode == "server_error":
                return json_response({"replyCode": 500, "replyMessage": "Server error"}, 500)
            if self.mode == "refused":
                return json_response({"replyCode": 7, "replyMessage": "Insufficient balance"})
            return json_response({"replyCode": 0, "data": {"callId": secrets.token_hex(8)}})
        return self.violation(f"unexpected {request.method} {request.path}")
