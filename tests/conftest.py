"""Fixtures: a real redis-server, a fake clock, fake providers and contract-checked clients."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
import redis
from flask import Flask
from openapi_core import Config, OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from werkzeug.test import TestResponse

from otpsvc import create_app
from otpsvc.dev.deployments import LocalCluster, LocalSentinel
from otpsvc.dev.redis_server import RedisServer
from otpsvc.events import EventWorker
from tests.fakes.alphasms import FakeAlphasms
from tests.fakes.cequens import FakeCequens
from tests.fakes.http import FakeServer
from tests.fakes.receiver import Receiver
from tests.fakes.sevenio import FakeSevenio
from tests.fakes.termii import FakeTermii

SPEC_PATH = Path(__file__).resolve().parent.parent / "otpsvc" / "openapi.yaml"
KEY_A = "client-a-key-0123456789abcdef"
KEY_B = "client-b-key-0123456789abcdef"
TERMII_KEY = "termii-test-api-key"
SEVENIO_KEY = "sevenio-test-api-key"
SEVENIO_SIGNING_KEY = "sevenio-signing-key-0123456789"
TERMII_WEBHOOK_SECRET = "termii-webhook-secret-0123"
CEQUENS_USER = "otpsvc-service"
CEQUENS_KEY = "cequens-test-api-key"
#: CEQUENS as the only provider, to the countries whose languages it has voices for by default
#: (Arabic, English): start-up refuses a route to CEQUENS in a language without a voice.
CEQUENS_ONLY = {"OTPSVC_PROVIDERS": "cequens", "OTPSVC_ALLOWED_COUNTRIES": "EG,SA,AE,NG,GB,US"}
ALPHASMS_KEY = "alphasms-test-api-key"
PUBLIC_URL = "https://otpsvc.example.test"
SECRET = "test-secret-key-0123456789abcdef0123456789"
PHONE = "+2348031234567"
PHONE_MASKED = "+234*******567"


#: Figures the suite measures along the way (fault latencies, example counts), printed at the end.
pytest.FIGURES = {}  # type: ignore[attr-defined]


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    figures = pytest.FIGURES  # type: ignore[attr-defined]
    if figures:
        terminalreporter.section("otpsvc figures")
        for name, value in figures.items():
            terminalreporter.write_line(f"{name}: {value}")


class FakeClock:
    """The service's only clock; tests move it instead of sleeping."""

    def __init__(self) -> None:
        self.now = time.time()
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("OTPSVC_TEST_REDIS_URL")
    if url:
        yield url
        return
    with RedisServer() as server:
        yield server.url


@pytest.fixture(scope="session")
def sentinel_url() -> Iterator[str]:
    """A Sentinel set (a master, a replica, 3 sentinels) for the session."""
    with LocalSentinel() as deployment:
        yield deployment.url


@pytest.fixture(scope="session")
def cluster_url() -> Iterator[str]:
    """A Redis Cluster (3 masters with a replica each) for the session."""
    with LocalCluster() as deployment:
        yield deployment.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _served(fake: FakeServer) -> Iterator[FakeServer]:
    yield fake
    fake.close()
    assert not fake.violations, f"requests broke the provider's documented shape: {fake.violations}"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """An app's webhook endpoint."""
    server = Receiver()
    yield server
    server.close()
    assert not server.violations, f"events broke openapi.yaml's webhooks: {server.violations}"


@pytest.fixture
def termii() -> Iterator[FakeTermii]:
    yield from _served(FakeTermii(api_key=TERMII_KEY))  # type: ignore[misc]


@pytest.fixture
def sevenio() -> Iterator[FakeSevenio]:
    yield from _served(FakeSevenio(api_key=SEVENIO_KEY))  # type: ignore[misc]


@pytest.fixture
def cequens() -> Iterator[FakeCequens]:
    yield from _served(FakeCequens(CEQUENS_USER, CEQUENS_KEY))  # type: ignore[misc]


@pytest.fixture
def alphasms() -> Iterator[FakeAlphasms]:
    yield from _served(FakeAlphasms(api_key=ALPHASMS_KEY))  # type: ignore[misc]


def base_env(redis_url: str) -> dict[str, str]:
    return {
        "OTPSVC_REDIS_URL": redis_url,
        "OTPSVC_SECRET_KEY": SECRET,
        "OTPSVC_API_KEYS": f"client-a:{KEY_A},client-b:{KEY_B}",
        "OTPSVC_RATE_LIMIT_START_IP": "1000 per minute",
        "OTPSVC_RATE_LIMIT_CHECK_IP": "1000 per minute",
        "OTPSVC_VELOCITY_PHONE": "1000 per hour",
        "OTPSVC_VELOCITY_IP": "1000 per hour",
        "OTPSVC_VELOCITY_PREFIX": "1000 per hour",
        "OTPSVC_ALLOWED_COUNTRIES": "NG,DE,UA,EG,FR,GB,US,SA,AE",
        "OTPSVC_PROVIDER_READ_TIMEOUT": "2",
        # The in-process app serves as many threads as a test races at it, not a gunicorn
        # worker's: its bulkhead is sized for them (tests/test_serving.py runs the real one).
        "OTPSVC_WORKER_THREADS": "64",
        "OTPSVC_PROVIDER_CONCURRENCY": "48",
    }


def fake_termii_env(redis_url: str, termii: FakeTermii, **extra: str) -> dict[str, str]:
    """A complete environment calling the local Termii server."""
    return {
        **base_env(redis_url),
        "OTPSVC_PROVIDERS": "termii",
        "OTPSVC_TERMII_BASE_URL": termii.url,
        "OTPSVC_TERMII_API_KEY": TERMII_KEY,
        **extra,
    }


def termii_env(redis_url: str, **extra: str) -> dict[str, str]:
    """A complete environment with Termii as the provider, for settings-only tests."""
    return {
        **base_env(redis_url),
        "OTPSVC_PROVIDERS": "termii",
        "OTPSVC_TERMII_API_KEY": "termii-key-123",
        **extra,
    }


@pytest.fixture
def make_app(
    redis_url: str,
    redis_client: redis.Redis,
    clock: FakeClock,
    termii: FakeTermii,
    sevenio: FakeSevenio,
    cequens: FakeCequens,
    alphasms: FakeAlphasms,
) -> Iterator[Callable[..., Flask]]:
    """Build apps on the real Redis and the fake providers (Termii by default); overrides apply."""
    apps: list[Flask] = []

    def factory(**overrides: str) -> Flask:
        env = {
            **base_env(redis_url),
            "OTPSVC_PROVIDERS": "termii",
            "OTPSVC_PUBLIC_URL": PUBLIC_URL,
            "OTPSVC_TERMII_BASE_URL": termii.url,
            "OTPSVC_TERMII_API_KEY": TERMII_KEY,
            "OTPSVC_SEVENIO_BASE_URL": sevenio.url,
            "OTPSVC_SEVENIO_API_KEY": SEVENIO_KEY,
            "OTPSVC_SEVENIO_SIGNING_KEY": SEVENIO_SIGNING_KEY,
            "OTPSVC_CEQUENS_BASE_URL": cequens.url,
            "OTPSVC_CEQUENS_USERNAME": CEQUENS_USER,
            "OTPSVC_CEQUENS_API_KEY": CEQUENS_KEY,
            "OTPSVC_ALPHASMS_BASE_URL": alphasms.url,
            "OTPSVC_ALPHASMS_API_KEY": ALPHASMS_KEY,
            **overrides,
        }
        app = create_app(env, clock=clock)
        apps.append(app)
        return app

    yield factory
    for app in apps:
        runtime = app.extensions["otpsvc"]
        runtime.dispatcher.close()
        runtime.redis.close()


@pytest.fixture
def dev_app(make_app: Callable[..., Flask]) -> Flask:
    """A dev-mode app: the console provider, the dev page and its inbox."""
    return make_app(OTPSVC_DEV_MODE="true", OTPSVC_PROVIDERS="console")


@pytest.fixture
def dev_api(dev_app: Flask, openapi: OpenAPI) -> Api:
    return Api(dev_app, KEY_A, openapi)


@pytest.fixture(scope="session")
def openapi() -> OpenAPI:
    config = Config(
        extra_media_type_deserializers={
            "application/problem+json": json.loads,
            "application/yaml": lambda data: data.decode() if isinstance(data, bytes) else data,
        }
    )
    return OpenAPI.from_file_path(str(SPEC_PATH), config=config)


class Api:
    """A test client for one API key; every response is checked against openapi.yaml."""

    def __init__(self, app: Flask, key: str | None, openapi: OpenAPI) -> None:
        self.app = app
        self.client = app.test_client()
        self.key = key
        self.openapi = openapi

    def request(self, method: str, path: str, **kwargs: Any) -> TestResponse:
        headers = dict(kwargs.pop("headers", {}))
        if self.key is not None:
            headers.setdefault("Authorization", f"Bearer {self.key}")
        response = self.client.open(path, method=method, headers=headers, **kwargs)
        self.openapi.validate_response(
            MockRequest(
                "http://127.0.0.1:8080",
                method.lower(),
                path.partition("?")[0],
                args=dict(parse_qsl(path.partition("?")[2])),
                headers=headers,
            ),
            MockResponse(
                response.get_data(),
                status_code=response.status_code,
                headers=dict(response.headers),
                content_type=response.mimetype or "",
            ),
        )
        if response.status_code >= 400:
            assert response.mimetype == "application/problem+json", response.data
        return response

    def start(self, phone: str = PHONE, **fields: Any) -> TestResponse:
        return self.request("POST", "/otp/start", json={"phone": phone, **fields})

    def check(self, verification_id: str, code: str) -> TestResponse:
        return self.request("POST", "/otp/check", json={"id": verification_id, "code": code})

    def get(self, verification_id: str) -> TestResponse:
        return self.request("GET", f"/otp/{verification_id}")

    def cancel(self, verification_id: str) -> TestResponse:
        return self.request("POST", f"/otp/{verification_id}/cancel")


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app()


@pytest.fixture
def api(app: Flask, openapi: OpenAPI) -> Api:
    return Api(app, KEY_A, openapi)


@pytest.fixture
def api_b(app: Flask, openapi: OpenAPI) -> Api:
    return Api(app, KEY_B, openapi)


def wrong_code(code: str) -> str:
    """A code of the same length that is certainly not ``code``."""
    return str((int(code) + 1) % 10 ** len(code)).zfill(len(code))


@pytest.fixture
def worker_for():  # type: ignore[no-untyped-def]
    running: list[tuple[EventWorker, threading.Thread]] = []

    def start(app) -> EventWorker:  # type: ignore[no-untyped-def]
        rt = app.extensions["otpsvc"]
        worker = EventWorker(rt.events, periodic=[rt.rollups.tick])
        thread = threading.Thread(target=worker.run, kwargs={"block_ms": 100}, daemon=True)
        thread.start()
        running.append((worker, thread))
        return worker

    yield start
    for worker, thread in running:
        worker.stop()
        thread.join(10)
