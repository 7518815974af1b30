"""A bare Flask app with the shape of a pair (bench/capacity.py's floor): two JSON POSTs that
parse their body and answer JSON, with no store and no provider.

With ``FLOOR_ARGON2_KIB`` set, each request also runs one argon2id hash at that memory (and
``FLOOR_ARGON2_TIME_COST``, default 1), as otpsvc's start and check each run one, and tells the
thread CPU it took in an ``X-Argon2-CPU-Seconds`` header. Code that runs between argon2 runs of
about 10 ms runs slower than code run back to back (``bench/cold.py``): this floor pays that
price too, so what otpsvc spends outside argon2 beyond it is otpsvc's own work.
"""

from __future__ import annotations

import os
import secrets
import time
from typing import Any

from argon2.low_level import Type, hash_secret_raw
from flask import Flask, request

app = Flask(__name__)

ARGON2_KIB = int(os.environ.get("FLOOR_ARGON2_KIB", "0"))
ARGON2_TIME_COST = int(os.environ.get("FLOOR_ARGON2_TIME_COST", "1"))


def argon2_headers(secret: str) -> dict[str, str]:
    """One argon2id run over ``secret`` when configured; its CPU seconds as a header."""
    if not ARGON2_KIB:
        return {}
    began = time.thread_time()
    salt = b"floor-app-salt-0"
    hash_secret_raw(secret.encode(), salt, ARGON2_TIME_COST, ARGON2_KIB, 1, 32, Type.ID)
    return {"X-Argon2-CPU-Seconds": f"{time.thread_time() - began:.9f}"}


@app.post("/otp/start")
def start() -> tuple[dict[str, Any], int, dict[str, str]]:
    body = request.get_json()
    headers = argon2_headers(body["phone"])
    return {"id": secrets.token_hex(8), "phone": body["phone"][:4] + "..."}, 201, headers


@app.post("/otp/check")
def check() -> tuple[dict[str, Any], int, dict[str, str]]:
    body = request.get_json()
    headers = argon2_headers(body["code"])
    return {"id": body["id"], "valid": True}, 200, headers
