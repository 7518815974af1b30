"""Hostile input: Schemathesis against openapi.yaml on the running app, negative data included."""

from __future__ import annotations

import re

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.conftest import KEY_A

EXAMPLES_PER_OPERATION_AND_MODE = 40
# A schema-valid body may still be refused, rightly: whether "+1000000" is a real number, and
# whether its country and type may be called, is beyond JSON Schema. Every other check runs.
NOT_APPLICABLE = [positive_data_acceptance]


def test_no_input_breaks_the_contract(make_app):
    """Valid and invalid requests for every operation: never a 5xx, always a documented answer.
    Requests without a key must get 401: the limit on failed keys (tested on its own, where a
    429 is the right answer) is lifted so that it does not answer them first."""
    app = make_app(OTPSVC_RATE_LIMIT_AUTH_FAILURES="100000 per minute")
    schema = schemathesis.openapi.from_wsgi("/openapi.yaml", app)
    tried = {"cases": 0, "server_errors": 0}
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in GenerationMode:

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES_PER_OPERATION_AND_MODE,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                derandomize=True,
                database=None,
            )
            def call(case: schemathesis.Case) -> None:
                response = case.call_and_validate(
                    headers={"Authorization": f"Bearer {KEY_A}"}, excluded_checks=NOT_APPLICABLE
                )
                tried["cases"] += 1
                tried["server_errors"] += response.status_code >= 500

            try:
                call()
            except Unsatisfiable:
                # Nothing can be made invalid in an operation without inputs (GET /healthz).
                assert mode is GenerationMode.NEGATIVE
    assert tried["server_errors"] == 0
    assert tried["cases"] > 300
    pytest.FIGURES["schemathesis"] = (  # type: ignore[attr-defined]
        f"{tried['cases']} generated requests (valid and invalid) over every operation, "
        f"{tried['server_errors']} answered 5xx"
    )


@pytest.mark.timeout(600)
def test_every_check_passes_against_otpsvc_serve(redis_url: str, termii, tmp_path):  # type: ignore[no-untyped-def]
    """The contract of the server that runs: ``otpsvc serve`` with production settings (its
    own sizing, the Termii stand-in as its provider, no dev routes) and the document it serves,
    under the Schemathesis CLI with every check on, positive data acceptance included, except
    where .ci/schemathesis.toml says why."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from otpsvc.dev.redis_server import free_port
    from tests.conftest import fake_termii_env
    from tests.test_cli import wait_until_serving

    root = Path(__file__).resolve().parent.parent
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTPSVC_")}
    env.update(fake_termii_env(redis_url, termii))
    env.update(
        PORT=str(port),
        HOST="127.0.0.1",
        OTPSVC_PUBLIC_URL=base,
        OTPSVC_METRICS_TOKEN="contract-metrics-token-0123456789abcdef",
        # Requests without a key must get 401, not the limit on failed keys first.
        OTPSVC_RATE_LIMIT_AUTH_FAILURES="100000 per minute",
    )
    for name in ("OTPSVC_WORKER_THREADS", "OTPSVC_PROVIDER_CONCURRENCY"):
        env.pop(name)  # the shipped sizing of a gunicorn worker
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen([sys.executable, "-m", "otpsvc", "serve"], env=env, stdout=log,
                              stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_until_serving(base, server)
        done = subprocess.run(
            [
                str(Path(sys.executable).parent / "schemathesis"),
                "--config-file",
                str(root / ".ci" / "schemathesis.toml"),
                "--no-color",
                "run",
                f"{base}/openapi.yaml",
                "-H",
                f"Authorization: Bearer {KEY_A}",
                "--max-examples",
                "60",
                "--seed",
                "1",
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=500,
        )
    finally:
        server.terminate()
        server.wait(20)
    assert done.returncode == 0, done.stdout[-6000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", done.stdout)
    assert generated, done.stdout[-2000:]
    assert int(generated.group(1)) > 500
    pytest.FIGURES["schemathesis, otpsvc serve"] = (  # type: ignore[attr-defined]
        f"{generated.group(1)} generated requests, every check on (positive data acceptance "
        "included, two documented exceptions): all passed"
    )
