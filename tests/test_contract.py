"""openapi.yaml: a valid OpenAPI 3.1 document that names every route the app serves."""

from __future__ import annotations

import re

import pytest
import yaml
from openapi_core.templating.responses.exceptions import ResponseNotFound
from openapi_core.testing import MockRequest, MockResponse
from openapi_core.validation.response.exceptions import InvalidData
from openapi_spec_validator import validate

from otpsvc.api.health import served_contract
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


def test_top_level_openapi_yaml_is_the_served_document(make_app, openapi):
    """The repository's openapi.yaml is the package's; a server cuts from it only the paths
    it does not serve (the dev server: every provider's webhooks but the console's)."""
    text = SPEC_PATH.read_text()
    assert (SPEC_PATH.parent.parent / "openapi.yaml").read_text() == text
    assert served_contract(text, True, ("termii", "sevenio", "cequens", "console")) == text
    app = make_app(OTPSVC_DEV_MODE="true", OTPSVC_PROVIDERS="console")
    served = Api(app, None, openapi).request("GET", "/openapi.yaml").get_data(as_text=True)
    assert served == served_contract(text, True, ("console",), brand=False)
    paths = set(yaml.safe_load(served)["paths"])
    assert {"/dev/calls", "/dev/faults", "/webhooks/console/{token}/status"} <= paths
    assert not [p for p in paths if p.startswith(("/webhooks/termii", "/webhooks/seven"))]


def test_a_production_server_serves_the_contract_of_the_routes_it_has(api: Api):
    """No dev routes outside dev mode, no webhooks it does not take (a provider it does not
    use, or one without its webhook secret), no ``brand`` where no client may name one: those
    answer 404 or 422 there, which the whole document would promise as 401 or 2xx."""
    served = api.request("GET", "/openapi.yaml").get_data(as_text=True)
    document = yaml.safe_load(served)
    validate(document)
    paths = set(document["paths"])
    assert {"/otp/start", "/otp/check", "/openapi.yaml"} <= paths
    assert not [p for p in paths if p.startswith(("/dev/", "/webhooks/"))]
    for path in ("/dev/calls", "/webhooks/sevenio", "/webhooks/termii"):
        assert api.request("GET" if "dev" in path else "POST", path).status_code == 404
    start = document["components"]["schemas"]["StartRequest"]["properties"]
    assert "brand" not in start
    assert {"phone", "mode", "end_user"} <= set(start)
    answer = api.start(brand="Partner Co")
    assert answer.get_json()["errors"] == {"brand": ["this client may not name a brand"]}
    # The rest of the text is the document's own, as written.
    whole = SPEC_PATH.read_text()
    assert (
        served.split("\n    StartRequest:")[0].split("\ncomponents:\n")[1]
        == (whole.split("\n    StartRequest:")[0].split("\ncomponents:\n")[1])
    )


def test_a_server_whose_clients_may_name_a_brand_serves_it_and_its_webhooks(
    make_app, openapi, tmp_path
):
    path = tmp_path / "clients.toml"
    path.write_text("[clients.client-a]\nrequest_brand = true\n")
    app = make_app(
        OTPSVC_CLIENTS_FILE=str(path),
        OTPSVC_PROVIDERS="termii,sevenio",
        OTPSVC_TERMII_WEBHOOK_SECRET="termii-webhook-secret-0123456789",
    )
    served = Api(app, None, openapi).request("GET", "/openapi.yaml").get_data(as_text=True)
    document = yaml.safe_load(served)
    assert "brand" in document["components"]["schemas"]["StartRequest"]["properties"]
    assert {"/webhooks/termii", "/webhooks/sevenio"} <= set(document["paths"])
    assert served == served_contract(SPEC_PATH.read_text(), False, ("termii", "sevenio"))


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


def test_every_event_the_scripts_write_has_a_webhooks_entry_and_no_other():
    """The events are the contract too: each type a Lua script can write is declared under
    ``webhooks`` (with its Standard Webhooks headers), and the spec declares no type the
    scripts never write. What each delivered body holds is checked by tests/fakes/receiver.py
    on every event the suite delivers."""
    scripts = SPEC_PATH.parent / "store" / "scripts"
    written = {
        kind
        for path in scripts.glob("*.lua")
        for kind in re.findall(r"'((?:verification|delivery|fraud)\.[a-z_]+)'", path.read_text())
    }
    spec = yaml.safe_load(SPEC_PATH.read_text())
    assert set(spec["webhooks"]) == written
    assert set(spec["components"]["schemas"]["Event"]["properties"]["type"]["enum"]) == written
    for kind, hook in spec["webhooks"].items():
        names = [p["$ref"].rsplit("/", 1)[1] for p in hook["post"]["parameters"]]
        assert names == ["WebhookId", "WebhookTimestamp", "WebhookSignature"], kind
        schema = hook["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert schema["allOf"][1]["properties"]["type"] == {"const": kind}


def test_the_check_route_advertises_only_what_it_answers(api: Api):
    """``OPTIONS /otp/check`` said GET too (``/otp/{id}`` caught the word); a GET is 405."""
    # (The raw client: neither method is in the contract.)
    auth = {"Authorization": f"Bearer {api.key}"}
    allowed = api.client.options("/otp/check", headers=auth).headers["Allow"]
    assert set(allowed.replace(" ", "").split(",")) == {"POST", "OPTIONS"}
    answer = api.client.get("/otp/check", headers=auth)
    assert answer.status_code == 405
    assert answer.get_json()["code"] == "method_not_allowed"
