"""A sign-in through the Python client generated from otpsvc's openapi.yaml, against `otpsvc dev`.

Generate the client, then run the flow (docs: "Generated clients"):

    openapi-python-client generate --path openapi.yaml --output-path build/client
    PYTHONPATH=build/client python examples/python/login.py http://127.0.0.1:8080 KEY SECRET 9000

KEY is the API key `otpsvc dev` prints; SECRET the client's event webhook secret
(`OTPSVC_EVENT_WEBHOOK_SECRETS`), whose webhook (`OTPSVC_EVENT_WEBHOOKS`) is
http://127.0.0.1:9000/hooks (the last argument is that port): the script receives the events
there and verifies each with the official `standardwebhooks` library before it reads it as the
generated `Event` type.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import NoReturn

from otpsvc_client import AuthenticatedClient
from otpsvc_client.api.dev import dev_calls
from otpsvc_client.api.verifications import check_verification, start_verification
from otpsvc_client.models import CheckRequest, CheckResult, Event, Problem, StartRequest
from standardwebhooks.webhooks import Webhook

PHONE = "+2348031234567"


def fail(what: str, detail: object) -> NoReturn:
    raise SystemExit(f"{what}: {detail!r}")


def receive_events(secret: str, port: int, events: queue.Queue[Event]) -> ThreadingHTTPServer:
    """The app's webhook: verified with the official library, then read as the typed event."""
    webhook = Webhook(secret)

    class Hooks(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            try:
                payload = webhook.verify(body, {k.lower(): v for k, v in self.headers.items()})
            except Exception:
                self.send_response(401)
                self.end_headers()
                return
            events.put(Event.from_dict(payload))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", port), Hooks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def newest_code(client: AuthenticatedClient, phone: str) -> str:
    """The code of the newest call to ``phone``, from the dev inbox (waits for it)."""
    inbox = dev_calls.sync(client=client, phone=phone, wait=10)
    if inbox is None or isinstance(inbox, Problem) or not inbox.calls:
        fail("dev inbox", inbox)
    return inbox.calls[0].code


def main(base: str, key: str, secret: str, port: str = "9000") -> None:
    events: queue.Queue[Event] = queue.Queue()
    server = receive_events(secret, int(port), events)
    client = AuthenticatedClient(base_url=base, token=key)
    request = StartRequest(phone=PHONE)
    idempotency_key = str(uuid.uuid4())

    started = start_verification.sync_detailed(
        client=client, body=request, idempotency_key=idempotency_key
    )
    verification = started.parsed
    if started.status_code != 201 or verification is None or isinstance(verification, Problem):
        fail("start", started)
    print(f"started {verification.id}: {verification.status}")

    # A retry with the same key (a timeout, say): the first answer, no second call.
    again = start_verification.sync_detailed(
        client=client, body=request, idempotency_key=idempotency_key
    )
    replayed = again.parsed
    if again.headers.get("Idempotent-Replayed") != "true" or isinstance(replayed, Problem):
        fail("idempotent retry", again)
    if replayed is None or replayed.id != verification.id:
        fail("idempotent retry", replayed)
    print("retry with the same Idempotency-Key: replayed, no second call")

    code = newest_code(client, PHONE)
    wrong = str((int(code[0]) + 1) % 10) + code[1:]
    for guess, expected in ((wrong, False), (code, True)):
        result = check_verification.sync(
            client=client, body=CheckRequest(id=verification.id, code=guess)
        )
        if not isinstance(result, CheckResult) or result.valid is not expected:
            fail("check", result)
        print(f"check {'right' if expected else 'wrong'} code: valid={result.valid}")

    # A new sign-in, and at once another start for the number: 429, honoured by Retry-After.
    second = start_verification.sync(client=client, body=request)
    if second is None or isinstance(second, Problem):
        fail("second start", second)
    too_soon = start_verification.sync_detailed(client=client, body=request)
    refusal = too_soon.parsed
    if too_soon.status_code != 429 or not isinstance(refusal, Problem):
        fail("start too soon", too_soon)
    wait = int(too_soon.headers["Retry-After"])
    print(f"start again at once: 429 {refusal.code}, Retry-After {wait} s")
    time.sleep(wait)
    resent = start_verification.sync_detailed(client=client, body=request)
    if resent.status_code != 200:
        fail("resend", resent)
    print("after Retry-After: 200, the call placed again")

    approved = events.get(timeout=30)
    while approved.type_.value != "verification.approved":
        approved = events.get(timeout=30)
    if approved.data.id != verification.id:
        fail("approval event", approved)
    print(f"event {approved.type_.value} for {approved.data.id}, signature verified")
    server.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:5])
