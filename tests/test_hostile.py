"""Hostile input: Schemathesis against openapi.yaml on the running app, negative data included."""

from __future__ import annotations

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
