"""A bare Flask app with the shape of a pair (bench/capacity.py's floor): two JSON POSTs that
parse their body and answer JSON, with no store, no provider and no argon2."""

from __future__ import annotations

import secrets
from typing import Any

from flask import Flask, request

app = Flask(__name__)


@app.post("/otp/start")
def start() -> tuple[dict[str, Any], int]:
    body = request.get_json()
    return {"id": secrets.token_hex(8), "phone": body["phone"][:4] + "..."}, 201


@app.post("/otp/check")
def check() -> dict[str, Any]:
    body = request.get_json()
    return {"id": body["id"], "valid": True}
