"""openapi.yaml: a valid OpenAPI 3.1 document that names every route the app serves."""

from __future__ import annotations

import re

import pytest
import yaml
from openapi_core.templating.responses.exceptions import ResponseNotFound
from openapi_core.testing import MockRequest, MockResponse
from openapi_core.validation.response.exceptions import InvalidData
from openapi_spec_validator import validate

from tests.conftest import SPEC_PATH, Api


@pytest.fixture(scope="module")
def spec() -> dict:
    return yaml.safe_load(SPEC_PATH.read_text())


def test_document_is_valid_openapi_31(spec):
    """openapi-spec-validator accepts the document as OpenAPI 3.1."""
    assert spec["openapi"].startswith("3.1")
    validate(spec)


#: The dev page's own endpoints: they serve the page on this machine only and are not an API.
PAGE_ENDPOINTS = re.compile(r"\A(dev_page\.|dev_root\Z)")


def _served(app) -> set[tuple[str, str]]:
    served = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or PAGE_ENDPOINTS.match(rule.endpoint):
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule).replace(
            "{verification_id}", "{id}"
        )
        served |= {(path, m) for m in rule.methods - {"HEAD", "OPTIONS"}}
    return served


def test_every_route_and_method_is_documented(app, make_app, spec):
    """Each Flask rule (but static and the dev page's own) has a path in the document with the
    same methods; the dev-tagged ones exist in dev mode only."""
    documented, dev_only = set(), set()
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method in {"get", "post", "put", "patch", "delete"}:
                documented.add((path, method.upper()))
                if "dev" in operation.get("tags", []):
                    dev_only.add((path, method.upper()))
    assert _served(app) == documented - dev_only
    dev = make_app(OTPSVC_DEV_MODE="true", OTPSVC_PROVIDERS="console")
    assert _served(dev) == documented


def test_top_level_openapi_yaml_is_the_served_document(api: Api):
    """The repository's openapi.yaml and GET /openapi.yaml are the same text."""
    served = api.request("GET", "/openapi.yaml").get_data(as_text=True)
    top = SPEC_PATH.parent.parent / "openapi.yaml"
    assert served == top.read_text() == SPEC_PATH.read_text()


def test_contract_check_catches_a_wrong_response(openapi):
    """The response check used by every test rejects a body that breaks the schema."""
    request = MockRequest("http://127.0.0.1:8080", "get", "/otp/" + "a" * 36)
    bad = MockResponse(b'{"id": "nope"}', status_code=200, content_type="application/json")
    with pytest.raises(InvalidData):
        openapi.validate_response(request, bad)


def test_undocumented_status_is_caught(openapi):
    """A status the document does not list for an operation fails the check."""
    request = MockRequest("http://127.0.0.1:8080", "get", "/healthz")
    teapot = MockResponse(b"{}", status_code=418, content_type="application/json")
    with pytest.raises(ResponseNotFound):
        openapi.validate_response(request, teapot)
