"""The contract on each deployment a user runs: a single Redis, Sentinel, and Redis Cluster.

The Sentinel set (a master, a replica, 3 sentinels) and the cluster (3 masters with a replica
each) are started from the bundled ``redis-server`` once per test session. Each test gets its own
key prefix, so tests never see each other's keys and nothing needs flushing.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis
import requests
from flask import Flask

from otpsvc import create_app
from otpsvc.dev.deployments import free_cluster_port
from otpsvc.dev.redis_server import RedisServer, free_port
from tests.conftest import (
    KEY_A,
    PHONE,
    SEVENIO_KEY,
    SEVENIO_SIGNING_KEY,
    Api,
    FakeClock,
    fake_termii_env,
    wrong_code,
)
from tests.fakes.sevenio import FakeSevenio
from tests.fakes.termii import FakeTermii
from tests.test_cli import wait_until_serving

DEPLOYMENTS = ["single", "sentinel", "cluster"]
_prefixes = itertools.count()


@pytest.fixture(params=DEPLOYMENTS)
def deployment(request: pytest.FixtureRequest) -> str:
    """The OTPSVC_REDIS_URL of each deployment in turn."""
    fixture = {"single": "redis_url", "sentinel": "sentinel_url", "cluster": "cluster_url"}
    return str(request.getfixturevalue(fixture[request.param]))


@pytest.fixture
def deployed(
    deployment: str, clock: FakeClock, termii: FakeTermii, sevenio: FakeSevenio
) -> Iterator[Callable[..., Flask]]:
    apps: list[Flask] = []
    prefix = f"t{next(_prefixes)}"

    def factory(**overrides: str) -> Flask:
        env = fake_termii_env(
            deployment,
            termii,
            OTPSVC_REDIS_PREFIX=prefix,
            OTPSVC_PUBLIC_URL="https://otpsvc.example.test",
            OTPSVC_SEVENIO_BASE_URL=sevenio.url,
            OTPSVC_SEVENIO_API_KEY=SEVENIO_KEY,
            OTPSVC_SEVENIO_SIGNING_KEY=SEVENIO_SIGNING_KEY,
            **overrides,
        )
        app = create_app(env, clock=clock)
        apps.append(app)
        return app

    yield factory
    for app in apps:
        app.extensions["otpsvc"].dispatcher.close()
        app.extensions["otpsvc"].redis.close()


def test_start_and_check(deployed, openapi, termii: FakeTermii):
    api = Api(deployed(), KEY_A, openapi)
    vid = api.start().get_json()["id"]
    code = termii.last_code()
    assert api.check(vid, wrong_code(code)).get_json()["attempts_remaining"] == 4
    assert api.check(vid, code).get_json()["valid"] is True
    assert api.check(vid, code).status_code == 404


def test_resend_replaces_the_code(deployed, openapi, termii: FakeTermii, clock: FakeClock):
    api = Api(deployed(), KEY_A, openapi)
    vid = api.start().get_json()["id"]
    first = termii.last_code()
    assert api.start().get_json()["code"] == "resend_too_soon"
    clock.advance(31)
    resent = api.start()
    assert (resent.status_code, resent.get_json()["id"]) == (200, vid)
    if termii.last_code() != first:
        assert api.check(vid, first).get_json()["valid"] is False
    assert api.check(vid, termii.last_code()).get_json()["valid"] is True


def test_cancel_kills_the_code_and_keeps_the_cooldown(deployed, openapi, termii: FakeTermii):
    api = Api(deployed(), KEY_A, openapi)
    vid = api.start().get_json()["id"]
    assert api.cancel(vid).get_json()["status"] == "canceled"
    assert api.check(vid, termii.last_code()).status_code == 404
    assert api.start().get_json()["code"] == "resend_too_soon"


def test_limits(deployed, openapi, termii: FakeTermii):
    app = deployed(OTPSVC_RATE_LIMIT_START_IP="2 per minute", OTPSVC_VELOCITY_PHONE="1 per hour")
    api = Api(app, KEY_A, openapi)
    assert api.start(PHONE, end_user={"ip": "198.51.100.1"}).status_code == 201
    refused = api.start(PHONE, end_user={"ip": "198.51.100.2"})
    assert refused.get_json()["code"] in ("resend_too_soon", "rate_limited")
    statuses = [
        api.start(f"+23480312345{i:02d}", end_user={"ip": "198.51.100.3"}).status_code
        for i in range(3)
    ]
    assert statuses == [201, 201, 429]


def test_a_check_over_its_limit_takes_no_attempt(deployed, openapi, termii, clock):
    """The check limit and the attempt are one step (one script on one server, two round trips
    on a cluster): a 429 leaves the verification's attempts alone."""
    api = Api(deployed(OTPSVC_RATE_LIMIT_CHECK_IP="2 per minute"), KEY_A, openapi)
    vid = api.start().get_json()["id"]
    code = termii.last_code()
    assert [api.check(vid, wrong_code(code)).get_json()["attempts_remaining"] for _ in "ab"] == [
        4,
        3,
    ]
    refused = api.check(vid, wrong_code(code))
    assert (refused.status_code, refused.get_json()["code"]) == (429, "rate_limited")
    assert api.check(vid, code).status_code == 429  # the right code is not compared either
    clock.advance(61)
    assert api.check(vid, wrong_code(code)).get_json()["attempts_remaining"] == 2
    assert api.check(vid, code).get_json()["valid"] is True


def test_idempotent_retry(deployed, openapi, termii: FakeTermii):
    api = Api(deployed(), KEY_A, openapi)
    headers = {"Idempotency-Key": "retry-1"}
    first = api.request("POST", "/otp/start", json={"phone": PHONE}, headers=headers)
    again = api.request("POST", "/otp/start", json={"phone": PHONE}, headers=headers)
    assert again.get_json() == first.get_json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(termii.calls) == 1


def test_signed_webhook_updates_the_delivery(deployed, openapi, sevenio: FakeSevenio, clock):
    from tests.test_webhooks import signed_sevenio

    app = deployed(OTPSVC_PROVIDERS="sevenio")
    api = Api(app, KEY_A, openapi)
    data = api.start("+4915123456789").get_json()
    payload = {
        "webhook_event": "voice_status",
        "data": {"id": data["delivery"]["provider_message_id"], "status": "ringing"},
    }
    headers, body = signed_sevenio(payload, int(clock()))
    hooks = Api(app, None, openapi)
    result = hooks.request(
        "POST", "/webhooks/sevenio", data=body, headers=headers, content_type="application/json"
    )
    assert result.get_json()["result"] == "applied"
    assert api.get(data["id"]).get_json()["delivery"]["status"] == "ringing"


def test_readiness(deployed, openapi):
    response = Api(deployed(), None, openapi).request("GET", "/readyz")
    assert response.status_code == 200
    assert response.get_json()["redis"] == "ok"


@pytest.fixture(scope="module")
def slot_checking_url() -> Iterator[str]:
    """A plain ``redis://`` URL to a server that refuses a command whose keys span slots, as a
    cluster-aware proxy in front of a cluster does: a one-node Redis Cluster owning every slot."""
    # A cluster node also listens on its port + 10000: free_port() may hand out a port above
    # 55535, whose bus port does not exist, and the node would not start.
    with RedisServer(
        free_cluster_port(),
        extra_args=("--cluster-enabled", "yes", "--cluster-config-file", "nodes-one.conf"),
    ) as server:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        client.execute_command("CLUSTER", "ADDSLOTS", *range(16384))
        deadline = time.monotonic() + 10
        while "cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
            assert time.monotonic() < deadline, "the one-node cluster did not come up"
            time.sleep(0.05)
        client.close()
        yield server.url


def test_a_server_that_refuses_keys_across_slots_gets_the_limits_on_their_own(
    slot_checking_url: str, openapi, termii: FakeTermii, clock, caplog
):
    """Behind a plain URL there may be a proxy that routes by slot: the chained limits are then
    refused (CROSSSLOT) before anything runs, and the store falls back to running them first, on
    their own, for good. The limits still hold."""
    env = fake_termii_env(
        slot_checking_url,
        termii,
        OTPSVC_REDIS_PREFIX=f"t{next(_prefixes)}",
        OTPSVC_RATE_LIMIT_CHECK_IP="3 per minute",
    )
    app = create_app(env, clock=clock)
    try:
        api = Api(app, KEY_A, openapi)
        vid = api.start().get_json()["id"]
        code = termii.last_code()
        assert api.check(vid, wrong_code(code)).get_json()["attempts_remaining"] == 4
        assert api.check(vid, code).get_json()["valid"] is True
        assert api.check(vid, code).status_code == 404
        assert api.check(vid, code).status_code == 429
        assert sum("CROSSSLOT" in r.getMessage() for r in caplog.records) <= 2
    finally:
        app.extensions["otpsvc"].dispatcher.close()
        app.extensions["otpsvc"].redis.close()


def test_two_instances_on_one_cluster_approve_once(cluster_url: str, termii: FakeTermii, tmp_path):
    """Two otpsvc instances (separate gunicorn processes and ports) on the same cluster: of 20
    simultaneous right checks spread over both, exactly one approves."""
    env = {
        **os.environ,
        **fake_termii_env(cluster_url, termii, OTPSVC_REDIS_PREFIX=f"two{next(_prefixes)}"),
        "WEB_CONCURRENCY": "2",
        "HOST": "127.0.0.1",
    }
    ports = [free_port(), free_port()]
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "otpsvc", "serve"],
            env={**env, "PORT": str(port)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for port in ports
    ]
    auth = {"Authorization": f"Bearer {KEY_A}"}
    try:
        bases = [f"http://127.0.0.1:{port}" for port in ports]
        for base, process in zip(bases, processes, strict=True):
            wait_until_serving(base, process)
        started = requests.post(
            f"{bases[0]}/otp/start", json={"phone": PHONE}, headers=auth, timeout=10
        )
        vid, code = started.json()["id"], termii.last_code()
        barrier = threading.Barrier(20)
        answers: list[bool] = []

        def check(i: int) -> None:
            barrier.wait()
            response = requests.post(
                f"{bases[i % 2]}/otp/check",
                json={"id": vid, "code": code},
                headers=auth,
                timeout=10,
            )
            answers.append(response.status_code == 200 and response.json()["valid"])

        threads = [threading.Thread(target=check, args=(i,)) for i in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(answers) == 20
        assert answers.count(True) == 1
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(30)


def test_ports_chosen_together_are_distinct():
    """The local Sentinel takes its three ports in one go: never one port twice."""
    from otpsvc.dev.redis_server import free_ports

    for _ in range(20):
        ports = free_ports(6)
        assert len(set(ports)) == 6


def test_the_conversion_rule_suspends_and_refuses(deployed, openapi, termii: FakeTermii, clock):
    """On each deployment: the rule's state lives in the funnel's slot and its mirrors in the
    velocity slot; the fold and the start's gates work across a cluster's nodes."""
    app = deployed(OTPSVC_FRAUD_MODE="enforce", OTPSVC_FRAUD_GRACE="5")
    api = Api(app, KEY_A, openapi)
    for i in range(5):
        number = f"+2347031234{i:03d}"
        vid = api.start(number).get_json()["id"]
        assert api.check(vid, termii.code_for(number)).get_json()["valid"] is True
    for i in range(20):
        assert api.start(f"+2348031234{i:03d}").status_code == 201
    clock.advance(8)
    app.extensions["otpsvc"].rollups.fold()
    refused = api.start("+2348031234999")
    assert (refused.status_code, refused.get_json()["code"]) == (429, "prefix_suspended")
    assert api.start("+2347031234999").status_code == 201
