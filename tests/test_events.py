"""Events to the apps: Standard Webhooks signatures, retries, a killed worker, tenant isolation,
failed events and their replay, against real local receivers."""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time

import pytest
from click.testing import CliRunner
from standardwebhooks import Webhook

from otpsvc.cli import main
from otpsvc.events import EventWorker
from tests.conftest import KEY_A, KEY_B, PHONE, Api, fake_termii_env, wrong_code
from tests.fakes.receiver import Receiver
from tests.fakes.termii import FakeTermii

SECRET_A = "whsec_" + base64.b64encode(b"a" * 8 + secrets.token_bytes(24)).decode()
SECRET_B = "whsec_" + base64.b64encode(b"b" * 8 + secrets.token_bytes(24)).decode()


def wait_for(condition, timeout: float = 15) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def event_env(**webhooks: Receiver) -> dict[str, str]:
    names = {"a": "client-a", "b": "client-b"}
    hooks = ";".join(f"{names[k]}={r.url}/hooks/otp" for k, r in webhooks.items())
    keys = ";".join(f"{names[k]}={SECRET_A if k == 'a' else SECRET_B}" for k in webhooks)
    return {
        "OTPSVC_EVENT_WEBHOOKS": hooks,
        "OTPSVC_EVENT_WEBHOOK_SECRETS": keys,
        "OTPSVC_EVENT_RETRY_BASE": "0.1",
    }


def test_an_approval_arrives_signed_per_standard_webhooks(
    make_app, openapi, termii: FakeTermii, receiver: Receiver, worker_for
):
    app = make_app(**event_env(a=receiver))
    api = Api(app, KEY_A, openapi)
    worker_for(app)
    vid = api.start().get_json()["id"]
    code = termii.last_code()
    api.check(vid, code)
    wait_for(lambda: any(e["type"] == "verification.approved" for e in receiver.events()))
    request = next(r for r in receiver.requests if b"verification.approved" in r.body)
    headers = {k.lower(): v for k, v in request.headers.items()}
    payload = Webhook(SECRET_A).verify(request.body, headers)
    assert payload["data"]["id"] == vid
    assert payload["data"]["status"] == "approved"
    assert headers["webhook-id"].startswith("msg_")
    assert code not in request.body.decode()
    assert PHONE not in request.body.decode()
    with pytest.raises(Exception):  # noqa: B017, PT011 - any verification error will do
        Webhook(SECRET_B).verify(request.body, headers)


def test_a_receiver_down_three_times_gets_the_event_once_with_one_id(
    make_app, openapi, termii: FakeTermii, worker_for
):
    receiver = Receiver([503, 503, 503])
    try:
        app = make_app(**event_env(a=receiver))
        api = Api(app, KEY_A, openapi)
        worker_for(app)
        api.cancel(api.start().get_json()["id"])
        wait_for(lambda: len(receiver.requests) >= 4)
        time.sleep(0.5)
        tries = [r for r in receiver.requests if b"verification.canceled" in r.body]
        assert len(tries) == 4
        assert len({r.headers["Webhook-Id"] for r in tries}) == 1
    finally:
        receiver.close()


def test_events_for_one_client_never_go_to_another(
    make_app, openapi, termii: FakeTermii, receiver: Receiver, worker_for
):
    other = Receiver()
    try:
        app = make_app(**event_env(a=receiver, b=other))
        worker_for(app)
        a, b = Api(app, KEY_A, openapi), Api(app, KEY_B, openapi)
        a.cancel(a.start().get_json()["id"])
        b_id = b.start("+2348031234500").get_json()["id"]
        b.check(b_id, wrong_code(termii.last_code()))
        b.cancel(b_id)
        wait_for(lambda: receiver.requests and other.requests)
        time.sleep(0.5)
        assert all(e["type"] == "verification.canceled" for e in receiver.events())
        assert {e["data"]["id"] for e in other.events()} == {b_id}
        assert all(e["data"]["id"] != b_id for e in receiver.events())
    finally:
        other.close()


def test_a_worker_killed_mid_delivery_loses_nothing(
    make_app, openapi, termii: FakeTermii, redis_url, receiver: Receiver
):
    """The first delivery hangs; that worker process is killed; the next worker delivers it."""
    app = make_app(**event_env(a=receiver))
    api = Api(app, KEY_A, openapi)
    receiver.hang = True
    env = {**os.environ, **fake_termii_env(redis_url, termii), **event_env(a=receiver)}
    first = subprocess.Popen([sys.executable, "-m", "otpsvc", "worker"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    second = None
    try:
        api.cancel(api.start().get_json()["id"])
        wait_for(lambda: len(receiver.requests) >= 1)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        receiver.hang = False
        receiver._release.set()
        second = subprocess.Popen([sys.executable, "-m", "otpsvc", "worker"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        wait_for(lambda: len(receiver.requests) >= 2, timeout=30)
        ids = {r.headers["Webhook-Id"] for r in receiver.requests}
        assert len(ids) == 1
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(10)


def canceled_event(app, openapi) -> str:  # type: ignore[no-untyped-def]
    """The body of a real verification.canceled event, to queue by hand (not through the
    scripts): a verification canceled, as its view shows it (client B's: it has no webhook,
    so no event of its own is queued)."""
    api = Api(app, KEY_B, openapi)
    vid = api.start("+2348039876543").get_json()["id"]
    data = api.cancel(vid).get_json()
    return json.dumps(
        {"type": "verification.canceled", "timestamp": data["created_at"], "data": data}
    )


def test_an_event_past_its_window_is_kept_failed_and_can_be_replayed(
    make_app, openapi, termii: FakeTermii, redis_url, receiver: Receiver
):
    app = make_app(**event_env(a=receiver))
    events = app.extensions["otpsvc"].events
    body = canceled_event(app, openapi)
    events.add("msg_old", "client-a", body, queued=time.time() - 90_000)
    worker = EventWorker(events)
    worker.ensure_group()
    worker.step(block_ms=100)
    worker.drain()
    assert not receiver.requests
    env = {**fake_termii_env(redis_url, termii), **event_env(a=receiver)}
    listed = CliRunner().invoke(main, ["events", "failed"], env=env)
    assert "msg_old" in listed.output
    assert "verification.canceled" in listed.output
    assert "last: never tried" in listed.output
    replayed = CliRunner().invoke(main, ["events", "replay", "msg_old"], env=env)
    assert replayed.exit_code == 0, replayed.output
    worker.step(block_ms=100)
    worker.drain()
    assert [r.headers["Webhook-Id"] for r in receiver.requests] == ["msg_old"]
    assert "no failed events" in CliRunner().invoke(main, ["events", "failed"], env=env).output


def test_webhook_urls_must_be_https_off_this_machine(redis_url):
    from otpsvc.config import load_settings
    from otpsvc.errors import ConfigError
    from tests.conftest import termii_env

    env = termii_env(
        redis_url,
        OTPSVC_EVENT_WEBHOOKS="client-a=http://app.example.com/hooks",
        OTPSVC_EVENT_WEBHOOK_SECRETS=f"client-a={SECRET_A}",
    )
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert "OTPSVC_EVENT_WEBHOOKS" in str(info.value)
    env["OTPSVC_EVENT_WEBHOOKS"] = "nobody=https://app.example.com/hooks"
    with pytest.raises(ConfigError):
        load_settings(env)


def test_only_a_verification_that_timed_out_pending_is_told_expired(
    make_app, openapi, termii: FakeTermii, receiver: Receiver, worker_for, clock
):
    app = make_app(**event_env(a=receiver))
    api = Api(app, KEY_A, openapi)
    pending = api.start().get_json()["id"]
    approved = api.start("+2348031234500").get_json()["id"]
    api.check(approved, termii.last_code())
    events = app.extensions["otpsvc"].events
    assert events.expire_due(clock() + 301) == 1
    assert events.expire_due(clock() + 301) == 0  # told once
    worker_for(app)
    wait_for(lambda: any(e["type"] == "verification.expired" for e in receiver.events()))
    time.sleep(0.3)
    expired = [e for e in receiver.events() if e["type"] == "verification.expired"]
    assert [e["data"]["id"] for e in expired] == [pending]
    assert expired[0]["data"]["status"] == "expired"


def test_the_worker_heartbeat_is_fresh_while_it_runs(
    termii: FakeTermii, redis_url, receiver: Receiver, tmp_path
):
    """``otpsvc worker --heartbeat FILE`` touches FILE every second while Redis answers: what
    the worker Deployment's liveness probe reads."""
    heartbeat = tmp_path / "alive"
    env = {**os.environ, **fake_termii_env(redis_url, termii), **event_env(a=receiver)}
    process = subprocess.Popen(
        [sys.executable, "-m", "otpsvc", "worker", "--heartbeat", str(heartbeat)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(heartbeat.exists, timeout=20)
        first = heartbeat.stat().st_mtime
        wait_for(lambda: heartbeat.stat().st_mtime > first, timeout=5)
    finally:
        process.terminate()
        process.wait(10)
    assert process.returncode == 0


@pytest.fixture
def own_stack(termii: FakeTermii, receiver: Receiver, openapi, clock):  # type: ignore[no-untyped-def]
    """An app on a redis-server of this test's own (which the test may restart empty), and a
    way to run an event worker on it: ``(server, api, env, run_worker(**options))``."""
    from otpsvc import create_app
    from otpsvc.dev.redis_server import RedisServer

    server = RedisServer().start()
    workers: list[EventWorker] = []
    env = {
        **fake_termii_env(server.url, termii, OTPSVC_REDIS_TIMEOUT="0.5"),
        **event_env(a=receiver),
    }
    app = create_app(env, clock=clock)

    def run_worker(**options) -> EventWorker:  # type: ignore[no-untyped-def]
        worker = EventWorker(app.extensions["otpsvc"].events, **options)
        threading.Thread(target=worker.run, kwargs={"block_ms": 100}, daemon=True).start()
        workers.append(worker)
        return worker

    yield server, Api(app, KEY_A, openapi), env, run_worker
    for worker in workers:
        worker.stop()
    server.close()


def test_the_worker_heals_after_redis_restarts_empty(own_stack, receiver: Receiver, caplog):
    """Redis restarts without its data (no persistence): the stream and the consumer group are
    gone. The running worker says so in one log line, makes them again, and delivers the next
    event, instead of logging 'redis unavailable' every second forever."""
    server, api, _, run_worker = own_stack
    run_worker()
    api.cancel(api.start().get_json()["id"])
    wait_for(lambda: len(receiver.events()) == 1)
    server.stop()
    server.start()
    second = api.start("+2348031234999").get_json()["id"]
    api.cancel(second)
    wait_for(lambda: len(receiver.events()) == 2, timeout=20)
    assert receiver.events()[1]["data"]["id"] == second
    assert "the consumer group senders is gone" in caplog.text


def test_a_webhook_secret_is_rotated_by_signing_with_both(
    make_app, openapi, termii: FakeTermii, receiver: Receiver, worker_for
):
    """While a client's secret is rotated (listed twice in OTPSVC_EVENT_WEBHOOK_SECRETS) every
    delivery carries a signature of each: a receiver still on the old secret and one already on
    the new one both verify it."""
    new = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    env = event_env(a=receiver)
    env["OTPSVC_EVENT_WEBHOOK_SECRETS"] = f"client-a={new};client-a={SECRET_A}"
    app = make_app(**env)
    api = Api(app, KEY_A, openapi)
    worker_for(app)
    api.cancel(api.start().get_json()["id"])
    wait_for(lambda: len(receiver.requests) >= 1)
    request = receiver.requests[0]
    headers = {k.lower(): v for k, v in request.headers.items()}
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert Webhook(SECRET_A).verify(request.body, headers)["type"] == "verification.canceled"
    assert Webhook(new).verify(request.body, headers)["type"] == "verification.canceled"


def test_the_worker_serves_its_metrics_and_logs_each_failed_try(
    make_app, openapi, termii: FakeTermii, redis_url, tmp_path
):
    """``otpsvc worker --metrics-port P``: GET /metrics has the deliveries by client, type and
    outcome, their latency, and the backlog (events waiting, the oldest one's age); each failed
    try is one log line with the event id, the client, the receiver's answer and the next try,
    never the payload."""
    import requests

    from otpsvc.dev.redis_server import free_port

    failing = Receiver([503] * 50)
    log_path = tmp_path / "worker.log"
    try:
        app = make_app(**event_env(a=failing))
        api = Api(app, KEY_A, openapi)
        port = free_port()
        env = {**os.environ, **fake_termii_env(redis_url, termii), **event_env(a=failing)}
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "otpsvc", "worker", "--metrics-port", str(port)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=log_file,
            )
            try:
                vid = api.start().get_json()["id"]
                api.cancel(vid)
                wait_for(lambda: len(failing.requests) >= 1, timeout=20)

                def scraped() -> str:
                    return requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text

                wait_for(lambda: "otpsvc_events_backlog" in scraped(), timeout=10)
                text = scraped()
            finally:
                process.terminate()
                process.wait(10)
        retried = (
            'otpsvc_event_deliveries_total{client="client-a",outcome="retry",'
            'type="verification.canceled"}'
        )
        assert retried in text
        assert 'otpsvc_event_delivery_seconds_count{client="client-a"}' in text
        assert "otpsvc_events_backlog 1.0" in text
        assert "otpsvc_events_oldest_age_seconds" in text
        logged = log_path.read_text()
        assert "for client-a: try 1 failed (HTTP 503); next try in about" in logged
        assert "msg_" in logged
        assert vid not in logged
        assert "+234" not in logged
    finally:
        failing.close()


def test_only_events_done_with_are_trimmed(make_app, openapi, termii, receiver: Receiver):
    """The worker's trim drops only what is done with: an entry that was acknowledged but left
    in its stream (a worker killed between the two steps, before they were one) is trimmed and
    counted in otpsvc_events_trimmed_total, while one still pending (in its retries) or not yet
    read is kept, to be delivered or given up into ``events failed``, never dropped unseen."""
    from otpsvc import metrics
    from otpsvc.events import GROUP

    app = make_app(**event_env(a=receiver), OTPSVC_EVENT_RETRY_WINDOW="60")
    events = app.extensions["otpsvc"].events
    r = events.redis
    now = time.time()
    acked, pending, unread = events.streams[0], events.streams[200], events.streams[201]
    for stream in (acked, pending, unread):
        r.xgroup_create(stream, GROUP, id="0", mkstream=True)
    for stream, age in ((acked, 500), (pending, 400), (unread, 300)):
        r.xadd(stream, {"id": f"msg_{age}"}, id=f"{int((now - age) * 1000)}-0")
    for stream in (acked, pending):
        [(_, [(entry_id, _)])] = r.xreadgroup(GROUP, "test", {stream: ">"}, count=1)
        if stream == acked:
            r.xack(stream, GROUP, entry_id)
    before = metrics.EVENTS_TRIMMED._value.get()
    assert events.trim() == 1
    assert metrics.EVENTS_TRIMMED._value.get() == before + 1
    assert r.xlen(acked) == 0
    assert r.xlen(pending) == 1
    assert r.xlen(unread) == 1


def test_a_hanging_receiver_does_not_delay_another_clients_events(
    make_app, openapi, termii: FakeTermii, worker_for
):
    """client-a's receiver hangs (until its 10 s read timeout); client-b's event, queued after
    a's, is delivered within a couple of seconds: each client's deliveries run in threads of
    their own."""
    hanging, healthy = Receiver(), Receiver()
    hanging.hang = True
    try:
        app = make_app(**event_env(a=hanging, b=healthy))
        worker_for(app)
        a, b = Api(app, KEY_A, openapi), Api(app, KEY_B, openapi)
        for i in range(6):
            a.cancel(a.start(f"+23480312345{i:02d}").get_json()["id"])
        wait_for(lambda: len(hanging.requests) >= 1)
        began = time.monotonic()
        b.cancel(b.start("+2348031239999").get_json()["id"])
        wait_for(lambda: len(healthy.requests) >= 1, timeout=5)
        served_after = time.monotonic() - began
        assert healthy.events()[0]["type"] == "verification.canceled"
        pytest.FIGURES["events, one receiver hanging"] = (  # type: ignore[attr-defined]
            f"the other client's event delivered {served_after:.2f} s after it was queued"
        )
    finally:
        hanging.close()
        healthy.close()


def test_retries_are_found_by_due_time_not_among_the_oldest(
    make_app, openapi, termii: FakeTermii, worker_for
):
    """60 failing events of client-a sit pending before client-b's one failed event: b's retry
    still comes when it is due (within seconds), not after a's 60."""
    failing, flaky = Receiver([503] * 1000), Receiver([503])
    try:
        app = make_app(**event_env(a=failing, b=flaky))
        events = app.extensions["otpsvc"].events
        body = json.dumps({"type": "verification.canceled", "timestamp": "x", "data": {}})
        for i in range(60):
            events.add(f"msg_a{i}", "client-a", body)
        events.add("msg_b", "client-b", body)
        worker_for(app)
        wait_for(lambda: len(flaky.requests) >= 2, timeout=10)
        assert [r.headers["Webhook-Id"] for r in flaky.requests] == ["msg_b", "msg_b"]
        assert events.redis.hget(events.last_key, "x") is None
        answers = set(events.redis.hvals(events.last_key))
        assert answers == {"HTTP 503"}
    finally:
        failing.close()
        flaky.close()


def test_a_suspension_outlives_a_redis_that_lost_its_data(own_stack, termii: FakeTermii, caplog):
    """Calls suspended, then Redis restarts without persistence (the kill switch key is gone):
    the running worker sees the data's epoch marker gone, sets the switch again and says so, and
    starts stay refused instead of the suspension being silently lifted."""
    from otpsvc.cli import kill_switch_guard

    server, api, env, run_worker = own_stack
    velocity = api.app.extensions["otpsvc"].service.velocity
    run_worker(guard=kill_switch_guard(velocity))
    suspended = CliRunner().invoke(main, ["calls", "suspend", "--reason", "fraud"], env=env)
    assert suspended.exit_code == 0, suspended.output
    time.sleep(0.5)  # the worker sees the suspension
    server.stop()
    server.start()
    wait_for(lambda: velocity.kill_state() is not None, timeout=20)
    assert velocity.kill_state()["reason"] == "fraud"
    refused = api.start()
    assert refused.status_code == 503
    assert refused.get_json()["code"] == "calls_suspended"
    assert "the kill switch is set again" in caplog.text
    assert termii.calls == []


def test_the_worker_process_rides_out_a_redis_restart(own_stack, receiver: Receiver, tmp_path):
    """``otpsvc worker`` (with its kill-switch guard and ladder) keeps running while Redis is
    away for a second and comes back, and delivers the next event: it logs and carries on
    wherever in its loop Redis went away, instead of exiting with a traceback."""
    server, api, env, _ = own_stack
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "otpsvc", "worker"],
            env={**os.environ, **env},
            stdout=sink,
            stderr=sink,
        )
    try:
        api.cancel(api.start().get_json()["id"])
        wait_for(lambda: len(receiver.events()) == 1, timeout=30)
        for _ in range(3):
            server.stop()
            time.sleep(1.0)
            server.start()
            time.sleep(0.5)
        assert process.poll() is None, log_path.read_text()
        second = api.start("+2348031234998").get_json()["id"]
        api.cancel(second)
        wait_for(lambda: len(receiver.events()) == 2, timeout=30)
        assert receiver.events()[1]["data"]["id"] == second
        assert process.poll() is None
    finally:
        process.terminate()
        process.wait(15)
    text = log_path.read_text()
    assert "Traceback" not in text, text
    assert "redis unavailable" in text


def test_a_worker_without_the_clients_webhook_leaves_its_events_pending(
    make_app, openapi, termii: FakeTermii, receiver: Receiver, worker_for
):
    """During a rollout a worker may not know a client's webhook yet: that client's events stay
    pending (not given up at once), and are delivered once a worker knows the client."""
    app = make_app(**event_env(a=receiver))
    stale = make_app(OTPSVC_EVENT_RETRY_BASE="0.1")  # no webhooks in its settings
    worker = worker_for(stale)
    api = Api(app, KEY_A, openapi)
    api.cancel(api.start().get_json()["id"])
    events = stale.extensions["otpsvc"].events
    wait_for(lambda: events.redis.hlen(events.last_key) == 1, timeout=15)
    assert events.failed() == {}
    assert receiver.events() == []
    # The worker's reload brings the client's webhook: the event goes out.
    worker.queue.settings = app.extensions["otpsvc"].events.settings
    wait_for(lambda: len(receiver.events()) == 1, timeout=30)
    assert receiver.events()[0]["type"] == "verification.canceled"
    assert events.failed() == {}


def test_failed_events_are_kept_for_their_days_then_forgotten(make_app, receiver: Receiver):
    """A given-up event is kept for ``events failed``/``events replay`` OTPSVC_EVENT_FAILED_DAYS
    (14) days, then forgotten by the worker's trim: the failed set does not grow for ever."""
    import json as json_module

    app = make_app(**event_env(a=receiver), OTPSVC_EVENT_FAILED_DAYS="2")
    events = app.extensions["otpsvc"].events
    now = time.time()
    for message_id, days in (("msg_old", 3), ("msg_recent", 1)):
        record = {"client": "client-a", "body": "{}", "failed_at": _rfc3339(now - days * 86400)}
        events.redis.hset(events.failed_key, message_id, json_module.dumps(record))
    assert events.prune_failed(now) == 1
    assert set(events.failed()) == {"msg_recent"}


def _rfc3339(at: float) -> str:
    from otpsvc.events import _rfc3339 as rfc3339

    return rfc3339(at)


def test_an_api_process_that_saw_a_suspension_keeps_it_when_redis_loses_its_data(
    own_stack, termii: FakeTermii
):
    """No worker runs: calls are suspended, the API process refuses a start (and so has seen
    the suspension), then Redis restarts without its data. The next start is refused and the
    switch is set again, instead of a call being placed."""
    server, api, env, _ = own_stack
    suspended = CliRunner().invoke(main, ["calls", "suspend", "--reason", "pumping"], env=env)
    assert suspended.exit_code == 0, suspended.output
    assert api.start().status_code == 503
    server.stop()
    server.start()
    refused = api.start("+2348031234997")
    assert refused.status_code == 503
    assert refused.get_json()["code"] == "calls_suspended"
    velocity = api.app.extensions["otpsvc"].service.velocity
    assert velocity.kill_state()["reason"] == "pumping"
    assert termii.calls == []


def test_the_workers_metrics_port_takes_the_metrics_token(termii: FakeTermii, redis_url):
    """With OTPSVC_METRICS_TOKEN set, the worker's metrics port needs it as the API's /metrics
    does (it bound every address with no token), and it listens where --metrics-host says."""
    import requests

    from otpsvc.dev.redis_server import free_port

    token = "worker-scrape-token-0123456789"
    port = free_port()
    env = {**os.environ, **fake_termii_env(redis_url, termii), "OTPSVC_METRICS_TOKEN": token}
    process = subprocess.Popen(
        [sys.executable, "-m", "otpsvc", "worker", "--metrics-port", str(port),
         "--metrics-host", "127.0.0.1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/metrics"

    def answers() -> bool:
        try:
            requests.get(url, timeout=2)
        except requests.ConnectionError:
            return False
        return True

    try:
        wait_for(answers, timeout=20)
        assert requests.get(url, timeout=5).status_code == 401
        wrong = {"Authorization": "Bearer not-the-token-0123456789"}
        assert requests.get(url, headers=wrong, timeout=5).status_code == 401
        right = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=5)
        assert right.status_code == 200
        assert "otpsvc_events_backlog" in right.text
    finally:
        process.terminate()
        process.wait(10)


def test_after_an_outage_events_are_caught_up_at_once(
    make_app, openapi, termii: FakeTermii, redis_url, receiver: Receiver
):
    """A receiver back after an outage need not wait out every event's back-off:
    ``events retry-now --client`` makes that client's waiting events due now, and
    ``events replay --all`` queues every failed one in one command (it took a call per id)."""
    app = make_app(**{**event_env(a=receiver), "OTPSVC_EVENT_RETRY_BASE": "600"})
    events = app.extensions["otpsvc"].events
    worker = EventWorker(events)
    worker.ensure_group()
    receiver.statuses = [503]
    body = canceled_event(app, openapi)
    events.add("msg_waiting", "client-a", body)
    worker.step(block_ms=100)
    worker.drain()
    assert len(receiver.requests) == 1  # failed once: its next try is an hour away
    for i in range(3):
        events.add(f"msg_failed_{i}", "client-a", body, queued=time.time() - 90_000)
    worker.step(block_ms=100)
    worker.drain()
    assert len(events.failed()) == 3
    receiver.statuses = []
    env = {**fake_termii_env(redis_url, termii), **event_env(a=receiver)}
    now = CliRunner().invoke(main, ["events", "retry-now", "--client", "client-a"], env=env)
    assert now.exit_code == 0, now.output
    assert "1 events due now" in now.output
    replayed = CliRunner().invoke(main, ["events", "replay", "--all"], env=env)
    assert "3 failed events queued again" in replayed.output
    for _ in range(3):
        worker.step(block_ms=100)
        worker.drain()
    delivered = {r.headers["Webhook-Id"] for r in receiver.requests[1:]}
    assert delivered == {"msg_waiting", "msg_failed_0", "msg_failed_1", "msg_failed_2"}
    assert events.failed() == {}
