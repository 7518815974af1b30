"""The fire drill: every fault an alert is for, caused for real, against the real Prometheus.

``otpsvc serve`` (its shipped gunicorn settings, two workers), ``otpsvc worker`` with its metrics
port, a Redis that is stopped and started again, a provider stand-in with a realistic delay, a
webhook receiver, two clients with steady traffic, and Debian's Prometheus scraping both every
second and evaluating a copy of ``deploy/prometheus/alerts.yml`` whose windows and ``for:`` are
thirty times shorter. Each fault must fire its alerts within their stated time, and only them;
each alert must clear after recovery. While an alert fires, the commands and queries its runbook
gives are run and must work as the runbook says. Then every panel of the Grafana dashboard must
show data.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from werkzeug.wrappers import Request, Response

from otpsvc.dev.redis_server import RedisServer, free_port
from tests.conftest import KEY_A, KEY_B, TERMII_KEY, fake_termii_env
from tests.fakes.http import Recorded
from tests.fakes.receiver import Receiver
from tests.fakes.termii import FakeTermii
from tests.test_cli import wait_until_serving
from tests.test_metrics import _tool

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RUNBOOKS = ROOT / "docs" / "runbooks"
DASHBOARD = ROOT / "deploy" / "grafana" / "otpsvc.json"

#: Every window, offset and ``for:`` of the rules is divided by this.
FACTOR = 30
#: What a threshold in seconds of age becomes in the compressed copy.
THRESHOLDS = {"otpsvc_events_oldest_age_seconds) > 600": "otpsvc_events_oldest_age_seconds) > 20"}
#: Scrape, evaluation and a loaded machine: added to every bound below.
SLACK = 20.0
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def compress(text: str) -> str:
    """The rules with every duration divided by :data:`FACTOR` (at least a second)."""

    def seconds(amount: str, unit: str) -> str:
        return f"{max(1, round(int(amount) * UNITS[unit] / FACTOR))}s"

    text = re.sub(r"for: (\d+)([smhd])", lambda m: "for: " + seconds(*m.groups()), text)
    text = re.sub(r"\[(\d+)([smhd])\]", lambda m: f"[{seconds(*m.groups())}]", text)
    text = re.sub(r"offset (\d+)([smhd])", lambda m: "offset " + seconds(*m.groups()), text)
    for before, after in THRESHOLDS.items():
        assert before in text, before
        text = text.replace(before, after)
    return text


def test_compress_shortens_every_duration():
    text = compress(RULES.read_text())
    assert "for: 60s" in text  # 30m
    assert "[120s] offset 2880s" in text  # [1h] offset 1d
    assert not re.search(r"(\[|for: |offset )\d+[mhd]\b", text)


class DrillReceiver(Receiver):
    """A client's webhook endpoint that can be taken down (it then answers 503)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def handle(self, request: Request, recorded: Recorded) -> Response:
        return Response("", status=503 if self.down else 204)


@dataclass
class Prometheus:
    port: int
    process: subprocess.Popen[bytes]
    #: (monotonic time, alert names firing) as the watcher saw them.
    seen: list[tuple[float, frozenset[str]]] = field(default_factory=list)

    def get(self, path: str) -> Any:
        answer = requests.get(f"http://127.0.0.1:{self.port}{path}", timeout=5)
        answer.raise_for_status()
        return answer.json()["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.get(
            "/api/v1/query?query=" + urllib.parse.quote(promql)
        )["result"]
        return result

    def query_range(self, promql: str, start: float, end: float) -> list[dict[str, Any]]:
        query = urllib.parse.urlencode({"query": promql, "start": start, "end": end, "step": 5})
        result: list[dict[str, Any]] = self.get(f"/api/v1/query_range?{query}")["result"]
        return result

    def firing(self) -> frozenset[str]:
        alerts = self.get("/api/v1/alerts")["alerts"]
        return frozenset(a["labels"]["alertname"] for a in alerts if a["state"] == "firing")

    def since(self, began: float) -> set[str]:
        """Every alert seen firing since ``began``."""
        return {name for at, names in list(self.seen) if at >= began for name in names}


class Traffic:
    """One start and one right check a second, as client-a (whose approvals are webhooks)."""

    def __init__(self, base: str, termii: FakeTermii) -> None:
        self.base, self.termii = base, termii
        self.running = threading.Event()
        self.stopped = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        auth = {"Authorization": f"Bearer {KEY_A}"}
        while not self.stopped.is_set():
            began = time.monotonic()
            if self.running.is_set():
                self.sent += 1
                phone = f"+234803{(self.sent * 7919) % 10**7:07d}"
                try:
                    started = requests.post(
                        f"{self.base}/otp/start", json={"phone": phone}, headers=auth, timeout=15
                    )
                    if started.status_code == 201:
                        requests.post(
                            f"{self.base}/otp/check",
                            json={"id": started.json()["id"], "code": self.termii.code_for(phone)},
                            headers=auth,
                            timeout=15,
                        )
                except requests.RequestException:
                    pass
            self.stopped.wait(max(0.0, 1.0 - (time.monotonic() - began)))


@dataclass
class Drill:
    prometheus: Prometheus
    env: dict[str, str]
    base: str
    results: list[str] = field(default_factory=list)
    followed: set[str] = field(default_factory=set)

    def otpsvc(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "otpsvc", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def wait(self, what: str, condition: Callable[[], bool], within: float) -> float:
        began = time.monotonic()
        while not condition():
            assert time.monotonic() - began < within, f"{what}: not within {within:.0f} s"
            time.sleep(0.5)
        return time.monotonic() - began

    def phase(
        self,
        name: str,
        expected: set[str],
        cause: Callable[[], None],
        recover: Callable[[], None],
        fire_within: float,
        clear_within: float,
    ) -> None:
        """Cause the fault; every expected alert fires in time, and nothing else; its runbook is
        followed; recover; every alert clears in time."""
        began = time.monotonic()
        cause()
        fired = self.wait(
            f"{name}: {sorted(expected)} firing",
            lambda: expected <= self.prometheus.firing(),
            fire_within + SLACK,
        )
        for alert in sorted(expected):
            self.follow_runbook(alert)
        recovered = time.monotonic()
        recover()
        cleared = self.wait(
            f"{name}: every alert cleared",
            lambda: not self.prometheus.firing(),
            clear_within + SLACK,
        )
        unexpected = self.prometheus.since(began) - expected
        assert not unexpected, f"{name}: {sorted(unexpected)} fired as well"
        self.results.append(
            f"{name}: {', '.join(sorted(expected))} fired after {fired:.0f} s, "
            f"cleared {cleared:.0f} s after recovery (of {time.monotonic() - recovered:.0f} s)"
        )

    def follow_runbook(self, alert: str, *, firing: bool = True) -> None:
        """Run what the runbook's "How to confirm" gives: each ``promql`` block must be a valid
        query that returns data while its alert fires, each ``otpsvc`` command of a ``sh``
        block must exit as stated (``# exit N`` after it; 0 otherwise)."""
        self.followed.add(alert)
        text = (RUNBOOKS / f"{alert}.md").read_text()
        confirm = text.split("## How to confirm", 1)[1].split("\n## ", 1)[0]
        blocks = re.findall(r"```(\w+)\n(.*?)```", confirm, re.S)
        assert blocks, f"{alert}: the runbook gives no query or command to confirm it"
        for language, body in blocks:
            if language == "promql":
                result = self.prometheus.query(body)  # a bad query is HTTP 400: raises
                assert result or not firing, f"{alert}: the runbook's query gave nothing: {body}"
            elif language == "sh":
                for line in body.splitlines():
                    command, _, comment = line.partition("#")
                    if not command.strip():
                        continue
                    words = shlex.split(command)
                    assert words[0] == "otpsvc", f"{alert}: not an otpsvc command: {line}"
                    wanted = int(m.group(1)) if (m := re.search(r"exit (\d)", comment)) else 0
                    if not firing:
                        wanted = 0
                    done = self.otpsvc(*words[1:])
                    assert done.returncode == wanted, (
                        f"{alert}: `{command.strip()}` exited {done.returncode}, not {wanted}: "
                        f"{done.stdout}{done.stderr}"
                    )


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Drill, dict[str, Any]]]:
    prometheus_path = _tool("prometheus")
    redis_server = RedisServer().start()
    termii = FakeTermii(TERMII_KEY)
    termii.delay = 0.3  # a provider answers in a few hundred milliseconds
    receiver = DrillReceiver()
    clients_file = tmp_path / "clients.toml"
    good_clients = (
        f'[clients.client-a]\nevent_webhook = "{receiver.url}/hooks/otp"\n\n'
        '[clients.client-b]\ncall_budget = "4 per 30 seconds"\nbudget = "0.05 per day"\n'
    )
    clients_file.write_text(good_clients)
    prices_file = tmp_path / "prices.toml"
    prices_file.write_text('[termii.voice]\ndefault = "0.0120"\n')
    port, worker_port, prom_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        **fake_termii_env(redis_server.url, termii),
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "OTPSVC_CLIENTS_FILE": str(clients_file),
        "OTPSVC_CURRENCY": "EUR",
        "OTPSVC_PRICES_FILE": str(prices_file),
        "OTPSVC_EVENT_WEBHOOK_SECRETS": "client-a=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "OTPSVC_BREAKER_THRESHOLD": "2",
        "OTPSVC_BREAKER_COOLOFF": "3",
        "OTPSVC_VELOCITY_COUNTRY": "5000 per hour",
        # A send the conversion rule judges a second after it (not two minutes).
        "OTPSVC_FRAUD_GRACE": "1",
    }
    # The shipped sizing of a gunicorn worker, not the in-process test app's.
    for name in (
        "OTPSVC_WORKER_THREADS",
        "OTPSVC_PROVIDER_CONCURRENCY",
        "PROMETHEUS_MULTIPROC_DIR",
    ):
        env.pop(name, None)
    processes: dict[str, subprocess.Popen[bytes]] = {}
    logs = tmp_path / "logs"
    logs.mkdir()

    def run(name: str, *args: str) -> subprocess.Popen[bytes]:
        with (logs / f"{name}.log").open("ab") as log:
            processes[name] = subprocess.Popen(args, env=env, stdout=log, stderr=log)
        return processes[name]

    def start_worker() -> subprocess.Popen[bytes]:
        return run("worker", sys.executable, "-m", "otpsvc", "worker", "--metrics-port",
                   str(worker_port), "--metrics-host", "127.0.0.1")  # fmt: skip

    rules = tmp_path / "alerts.yml"
    rules.write_text(compress(RULES.read_text()))
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {"job_name": "otpsvc", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]},
            {"job_name": "otpsvc-worker",
             "static_configs": [{"targets": [f"127.0.0.1:{worker_port}"]}]},
        ],
    }))  # fmt: skip
    serve = run("serve", sys.executable, "-m", "otpsvc", "serve")
    start_worker()
    run("prometheus", prometheus_path, f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{prom_port}")  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    prometheus = Prometheus(prom_port, processes["prometheus"])
    drill = Drill(prometheus, {k: v for k, v in env.items() if k not in ("PORT",)}, base)
    traffic = Traffic(base, termii)
    watching = threading.Event()

    def watch() -> None:
        while not watching.is_set():
            with contextlib.suppress(requests.RequestException, KeyError, ValueError):
                prometheus.seen.append((time.monotonic(), prometheus.firing()))
            watching.wait(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    try:
        wait_until_serving(base, serve)
        drill.wait(
            "both targets scraped",
            lambda: len(_safe(prometheus.query, "up == 1")) == 2,
            60,
        )
        traffic.thread.start()
        traffic.running.set()
        watcher.start()
        yield drill, {
            "redis": redis_server, "termii": termii, "receiver": receiver, "serve": serve,
            "start_worker": start_worker, "processes": processes, "traffic": traffic,
            "clients_file": clients_file, "good_clients": good_clients, "base": base,
        }  # fmt: skip
    finally:
        watching.set()
        traffic.stopped.set()
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        termii.close()
        receiver.close()
        redis_server.close()
        for line in drill.results:
            print(line)
        for log in sorted(logs.iterdir()):
            print(f"== {log.name}", *log.read_text(errors="replace").splitlines()[-15:], sep="\n")


def _safe(call: Callable[[str], list[dict[str, Any]]], arg: str) -> list[dict[str, Any]]:
    try:
        return call(arg)
    except (requests.RequestException, KeyError, ValueError):
        return []


@pytest.mark.timeout(900)
def test_every_alert_fires_on_its_fault_and_clears_after(stack, record_property):
    drill, parts = stack
    prometheus: Prometheus = drill.prometheus
    termii: FakeTermii = parts["termii"]
    receiver: DrillReceiver = parts["receiver"]
    traffic: Traffic = parts["traffic"]
    redis_server: RedisServer = parts["redis"]

    began = time.time()
    # Quiet: steady traffic of two clients raises nothing.
    quiet = time.monotonic()
    drill.wait("traffic flowing", lambda: traffic.sent >= 20 and len(receiver.requests) >= 10, 90)
    assert not prometheus.since(quiet), prometheus.since(quiet)

    def hup() -> None:
        parts["serve"].send_signal(signal.SIGHUP)

    def bad_settings() -> None:
        parts["clients_file"].write_text(parts["good_clients"] + 'colour = "red"\n')
        hup()

    def good_settings() -> None:
        parts["clients_file"].write_text(parts["good_clients"])
        hup()

    drill.phase("a reload refused", {"OtpsvcSettingsRefused"}, bad_settings, good_settings,
                fire_within=5, clear_within=5)  # fmt: skip

    def provider(mode: str) -> Callable[[], None]:
        def set_mode() -> None:
            termii.mode = mode

        return set_mode

    provider_alerts = {"OtpsvcProviderErrorRate", "OtpsvcProviderBreakerOpen"}
    drill.phase("the provider failing", provider_alerts, provider("server_error"),
                provider("ok"), fire_within=15, clear_within=25)  # fmt: skip

    def hang() -> None:
        termii.hang = True

    def answer() -> None:
        termii.hang = False
        termii._release.set()

    drill.phase("the provider hanging", provider_alerts, hang, answer,
                fire_within=25, clear_within=25)  # fmt: skip

    def spend_budget() -> None:
        auth = {"Authorization": f"Bearer {KEY_B}"}
        statuses = [
            requests.post(
                f"{drill.base}/otp/start",
                json={"phone": f"+234805{i:07d}"},
                headers=auth,
                timeout=15,
            ).status_code
            for i in range(5)
        ]
        assert statuses == [201, 201, 201, 201, 429], statuses

    def raise_budget() -> None:
        # The calls age out of the call budget's window; the budget in money, a calendar day's,
        # is raised by the operator, as its runbook says, with a reload.
        parts["clients_file"].write_text(parts["good_clients"].replace("0.05 per day", "5 per day"))
        hup()

    budgets = {"OtpsvcClientBudgetHigh", "OtpsvcSpendBudgetHigh"}
    drill.phase("a client's budgets spent", budgets, spend_budget, raise_budget,
                fire_within=12, clear_within=32)  # fmt: skip

    def receiver_down() -> None:
        receiver.down = True

    def receiver_up() -> None:
        receiver.down = False
        runbook = (RUNBOOKS / "OtpsvcEventBacklogGrowing.md").read_text()
        assert "otpsvc events retry-now" in runbook
        done = drill.otpsvc("events", "retry-now")
        assert done.returncode == 0, done.stderr

    drill.phase("a receiver down", {"OtpsvcEventBacklogGrowing"}, receiver_down, receiver_up,
                fire_within=32, clear_within=10)  # fmt: skip

    def kill_worker() -> None:
        # Quiet first, so the killed worker holds no event (its catch-up is not this drill's).
        traffic.running.clear()
        drill.wait("backlog empty", lambda: _value(prometheus, "max(otpsvc_events_backlog)") == 0,
                   60)  # fmt: skip
        parts["processes"]["worker"].kill()

    def restart_worker() -> None:
        parts["start_worker"]()
        traffic.running.set()

    drill.phase("the worker killed", {"OtpsvcEventWorkerDown"}, kill_worker, restart_worker,
                fire_within=36, clear_within=10)  # fmt: skip

    def suspend() -> None:
        done = drill.otpsvc("calls", "suspend", "--reason", "fire drill")
        assert done.returncode == 0, done.stderr

    def resume() -> None:
        runbook = (RUNBOOKS / "OtpsvcCallsSuspendedLong.md").read_text()
        assert "otpsvc calls resume" in runbook
        done = drill.otpsvc("calls", "resume", "--reason", "fire drill over")
        assert done.returncode == 0, done.stderr

    drill.phase("calls suspended", {"OtpsvcCallsSuspendedLong"}, suspend, resume,
                fire_within=62, clear_within=12)  # fmt: skip

    def pump() -> None:
        # Twenty calls to one prefix whose codes are never entered: the conversion rule (in
        # monitor mode, as shipped) suspends it a second after the last.
        auth = {"Authorization": f"Bearer {KEY_A}"}
        for i in range(20):
            answer = requests.post(f"{drill.base}/otp/start", headers=auth, timeout=15,
                                   json={"phone": f"+234905{100 + i}1234"})  # fmt: skip
            assert answer.status_code == 201, answer.text

    def lift() -> None:
        runbook = (RUNBOOKS / "OtpsvcDestinationSuspended.md").read_text()
        assert "otpsvc fraud lift +234803" in runbook
        done = drill.otpsvc("fraud", "lift", "+234905")
        assert done.returncode == 0, done.stderr

    drill.phase("a prefix pumped", {"OtpsvcDestinationSuspended"}, pump, lift,
                fire_within=20, clear_within=20)  # fmt: skip

    def redis_down() -> None:
        redis_server.stop()

    def redis_up() -> None:
        redis_server.start()

    drill.phase("Redis down", {"OtpsvcRedisDown"}, redis_down, redis_up,
                fire_within=5, clear_within=8)  # fmt: skip

    # The runbooks of the alerts no fault here raises: their queries are valid, their commands
    # run (as they do on a healthy service).
    for page in sorted(RUNBOOKS.glob("Otpsvc*.md")):
        if page.stem not in drill.followed:
            drill.follow_runbook(page.stem, firing=False)

    # Every panel of the dashboard shows data over the drill (its client variable at "All").
    panels = json.loads(DASHBOARD.read_text())["panels"]
    empty = []
    for panel in panels:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "20s").replace("$client", ".+")
            if not prometheus.query_range(expr, began, time.time()):
                empty.append(f"{panel['title']}: {expr}")
    assert not empty, empty
    record_property("drill", drill.results)


def _value(prometheus: Prometheus, promql: str) -> float | None:
    result = _safe(prometheus.query, promql)
    return float(result[0]["value"][1]) if result else None
