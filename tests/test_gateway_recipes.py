"""The gateway recipes of deploy/gateways, run for real: Debian's nginx and HAProxy in front of
``otpsvc serve`` (shipped settings, a gateway client), and end users simulated as connections
that a load balancer's PROXY protocol header says come from their own addresses.

Through each gateway: a forged ``X-Forwarded-For``, body ``end_user`` or ``X-End-User-Id`` changes
nothing; limits count per person; one person cannot spend another's account limit; two people's
identical ``Idempotency-Key`` give two verifications; the gateway's request id reaches otpsvc and
comes back; operator routes are not reachable. CI installs nginx-light and haproxy
(``OTPSVC_REQUIRE_GATEWAYS=1``); elsewhere the tests skip when they are missing."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import string
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from otpsvc.dev.redis_server import free_port
from tests.conftest import KEY_A, KEY_B
from tests.fakes.termii import FakeTermii
from tests.test_serving import serve  # noqa: F401 - the fixture the gateway fixture runs

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "deploy" / "gateways"
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
HAPROXY = shutil.which("haproxy") or (
    "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
)
REQUIRED = os.environ.get("OTPSVC_REQUIRE_GATEWAYS") == "1"
#: End users and their passwords at the gateway (its stand-in authentication).
USERS = {
    "alice": "alice-pw",
    "bob": "bob-pw",
    "mallory": "mallory-pw",
    **{f"member{i}": f"member{i}-pw" for i in range(16)},
}
CLIENT_FILE = '[clients.edge]\ncaller = "gateway"\n'


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: Any


class Gateway:
    """A running gateway, and end users who connect through its load balancer."""

    def __init__(self, port: int, process: subprocess.Popen[bytes]) -> None:
        self.port = port
        self.process = process
        self._source_port = 40000

    def request(
        self,
        address: str,
        method: str,
        path: str,
        body: object | None = None,
        *,
        user: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        """One request from ``address``: the PROXY protocol header a load balancer would put
        before it, then HTTP/1.1 with the user's credentials at the gateway."""
        self._source_port += 1
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        connection.sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        connection.sock.sendall(
            f"PROXY TCP4 {address} 127.0.0.1 {self._source_port} {self.port}\r\n".encode()
        )
        sent = dict(headers or {})
        if user is not None:
            sent["Authorization"] = basic(user)
        payload = None
        if body is not None:
            payload = body if isinstance(body, str) else json.dumps(body)
            sent["Content-Type"] = "application/json"
        connection.request(method, path, body=payload, headers=sent)
        response = connection.getresponse()
        raw = response.read()
        connection.close()
        try:
            parsed: Any = json.loads(raw)
        except ValueError:
            parsed = raw.decode(errors="replace")
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, parsed)

    def start(self, address: str, phone: str, user: str = "alice", **kwargs: Any) -> Answer:
        body = kwargs.pop("body", None) or {"phone": phone}
        return self.request(address, "POST", "/otp/start", body, user=user, **kwargs)


def basic(user: str) -> str:
    import base64

    token = base64.b64encode(f"{user}:{USERS[user]}".encode()).decode()
    return f"Basic {token}"


def phone(i: int) -> str:
    return f"+2348037{i:06d}"


def render(template: str, **values: str) -> str:
    """What ``envsubst`` with these variables named does: only they are replaced."""
    return string.Template(template).safe_substitute(values)


def start_nginx(workdir: Path, upstream: str, port: int) -> subprocess.Popen[bytes]:
    (workdir / "tmp").mkdir()
    users = workdir / "users.htpasswd"
    # nginx reads {PLAIN} passwords too; production would use hashes (htpasswd -B).
    users.write_text("".join(f"{u}:{{PLAIN}}{p}\n" for u, p in USERS.items()))
    config = workdir / "nginx.conf"
    config.write_text(
        render(
            (RECIPES / "nginx.conf").read_text(),
            OTPSVC_UPSTREAM=upstream,
            OTPSVC_GATEWAY_KEY=KEY_A,
            GATEWAY_LISTEN=f"127.0.0.1:{port}",
            GATEWAY_LB_NETWORK="127.0.0.1/32",
            GATEWAY_USERS_FILE=str(users),
        )
    )
    # As root, nginx's workers would run as an unprivileged user that cannot enter pytest's
    # private temporary directory: here they stay root (a test-only switch, not in the recipe).
    extra = "user root root;" if os.geteuid() == 0 else ""
    assert NGINX is not None
    subprocess.run(
        [NGINX, "-t", "-q", "-p", str(workdir), "-c", str(config), "-g", f"daemon off;{extra}"],
        check=True,
    )
    return subprocess.Popen(
        [NGINX, "-p", str(workdir), "-c", str(config), "-g", f"daemon off;{extra}"]
    )


def start_haproxy(workdir: Path, upstream: str, port: int) -> subprocess.Popen[bytes]:
    users = workdir / "users.cfg"
    users.write_text(
        "userlist endusers\n"
        + "".join(f"    user {u} insecure-password {p}\n" for u, p in USERS.items())
    )
    env = {
        **os.environ,
        "OTPSVC_UPSTREAM": upstream,
        "OTPSVC_GATEWAY_KEY": KEY_A,
        "GATEWAY_BIND": f"127.0.0.1:{port}",
    }
    config = str(RECIPES / "haproxy.cfg")
    assert HAPROXY is not None
    subprocess.run([HAPROXY, "-c", "-q", "-f", config, "-f", str(users)], check=True, env=env)
    return subprocess.Popen([HAPROXY, "-db", "-f", config, "-f", str(users)], env=env)


@pytest.fixture(params=["nginx", "haproxy"])
def gateway(request, tmp_path) -> Iterator[Gateway]:
    """``otpsvc serve`` with a gateway client ``edge`` and a backend ``app``, and the recipe's
    gateway in front of it, as the docs set them up."""
    binary = NGINX if request.param == "nginx" else HAPROXY
    if binary is None:
        if REQUIRED:
            pytest.fail(f"{request.param} is not installed (OTPSVC_REQUIRE_GATEWAYS=1)")
        pytest.skip(f"{request.param} is not installed (apt-get install nginx-light haproxy)")
    clients = tmp_path / "clients.toml"
    clients.write_text(CLIENT_FILE)
    served = request.getfixturevalue("serve")(
        OTPSVC_API_KEYS=f"edge:{KEY_A},app:{KEY_B}",
        OTPSVC_CLIENTS_FILE=str(clients),
        OTPSVC_TRUSTED_PROXIES="1",
        OTPSVC_TRUSTED_PROXY_NETWORKS="127.0.0.1/32",
        # The shipped per-person limits: what each end user behind the gateway must get.
        OTPSVC_RATE_LIMIT_START_IP="10 per minute;60 per hour",
        OTPSVC_VELOCITY_IP="10 per hour;30 per day",
        OTPSVC_VELOCITY_USER="5 per hour;10 per day",
    )
    port = free_port()
    workdir = tmp_path / request.param
    workdir.mkdir()
    starter = start_nginx if request.param == "nginx" else start_haproxy
    process = starter(workdir, served.base.removeprefix("http://"), port)
    try:
        wait_for_port(port, process)
        yield Gateway(port, process)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


def wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert process.poll() is None, "the gateway exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("the gateway did not listen")


def test_forged_addresses_and_bodies_change_nothing(gateway: Gateway, termii: FakeTermii):
    """One address (a household, say: an account each) that forges X-Forwarded-For on every
    start gets the per-address limit (10 a minute) and no more; a body naming another end user
    is a 422 that places no call; another address behind the same gateway is not held back."""
    statuses = [
        gateway.start(
            "203.0.113.10",
            phone(100 + i),
            user=f"member{i}",
            headers={"X-Forwarded-For": f"192.0.2.{i}"},
        ).status
        for i in range(14)
    ]
    assert statuses.count(201) == 10, statuses
    assert set(statuses[10:]) == {429}
    calls = len(termii.calls)
    forged = gateway.start(
        "203.0.113.12",
        phone(150),
        body='{"phone": "' + phone(150) + '", "end\\u005fuser": {"ip": "192.0.2.99"}}',
    )
    assert forged.status == 422
    assert list(forged.body["errors"]) == ["end_user"]
    assert len(termii.calls) == calls
    assert gateway.start("203.0.113.11", phone(151)).status == 201


def test_one_person_cannot_spend_another_persons_account_limit(gateway: Gateway):
    """mallory, naming alice in X-End-User-Id and in the body, spends only mallory's own
    account limit (5 calls an hour): alice's start still goes through."""
    answers = [
        gateway.start(
            f"203.0.113.{30 + i}",
            phone(200 + i),
            user="mallory",
            headers={"X-End-User-Id": "alice"},
        )
        for i in range(6)
    ]
    assert [a.status for a in answers[:5]] == [201] * 5
    assert answers[5].status == 429
    assert answers[5].body["limit"] == "velocity_user"
    forged = gateway.start(
        "203.0.113.40",
        phone(210),
        user="mallory",
        body={"phone": phone(210), "end_user": {"user_id": "alice"}},
    )
    assert forged.status == 422
    assert gateway.start("203.0.113.41", phone(211), user="alice").status == 201


def test_two_people_with_one_idempotency_key_get_two_verifications(gateway: Gateway):
    """alice and bob send the same Idempotency-Key and body: two verifications; alice's retry
    is hers again."""
    key = {"Idempotency-Key": "signin-42"}
    alice = gateway.start("203.0.113.50", phone(300), user="alice", headers=key)
    bob = gateway.start("203.0.113.51", phone(300), user="bob", headers=key)
    again = gateway.start("203.0.113.50", phone(300), user="alice", headers=key)
    assert (alice.status, bob.status) == (201, 201)
    assert alice.body["id"] != bob.body["id"]
    assert "idempotent-replayed" not in bob.headers
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.body["id"] == alice.body["id"]


def test_the_gateways_request_id_flows_through(gateway: Gateway):
    """The end user's own X-Request-Id is replaced by the gateway's, which otpsvc takes and
    answers with (and puts on its problem bodies)."""
    answer = gateway.start(
        "203.0.113.60", phone(400), user="bob", headers={"X-Request-Id": "forged-by-user"}
    )
    assert answer.status == 201
    request_id = answer.headers.get("x-request-id", "")
    assert request_id
    assert request_id != "forged-by-user"
    refused = gateway.request(
        "203.0.113.60", "POST", "/otp/check", {"id": "0" * 36, "code": "12"}, user="bob"
    )
    assert refused.status == 422
    assert refused.body["request_id"] == refused.headers["x-request-id"]


def test_operator_routes_are_not_reachable(gateway: Gateway):
    """/metrics, /readyz, /healthz, /dev, /docs and the provider webhooks are not served by the
    gateway, authenticated or not; a request without the gateway's credentials gets 401."""
    for path in ("/metrics", "/readyz", "/healthz", "/dev", "/docs", "/webhooks/termii"):
        answer = gateway.request("203.0.113.70", "GET", path, user="alice")
        assert answer.status == 404, (path, answer.status)
    unauthenticated = gateway.request("203.0.113.70", "POST", "/otp/start", {"phone": phone(1)})
    assert unauthenticated.status == 401
