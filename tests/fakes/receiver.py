"""An app's webhook endpoint, for the events a worker delivers."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from werkzeug.wrappers import Request, Response

from tests.fakes.http import FakeServer, Recorded

SPEC_PATH = Path(__file__).resolve().parents[2] / "otpsvc" / "openapi.yaml"


@cache
def _spec() -> tuple[dict[str, Any], Registry]:
    spec = yaml.safe_load(SPEC_PATH.read_text())
    resource = Resource.from_contents(spec, default_specification=DRAFT202012)
    return spec, Registry().with_resource("urn:otpsvc", resource)


def event_problems(headers: dict[str, str], body: bytes) -> list[str]:
    """What in one delivered event breaks openapi.yaml's ``webhooks`` entry for its type: the
    body's schema and the Standard Webhooks headers."""
    spec, registry = _spec()
    event = json.loads(body)
    kind = event.get("type") if isinstance(event, dict) else None
    hook = spec.get("webhooks", {}).get(kind)
    if hook is None:
        return [f"{kind}: no webhooks entry in openapi.yaml"]
    pointer = f"urn:otpsvc#/webhooks/{kind}/post/requestBody/content/application~1json/schema"
    validator = Draft202012Validator({"$ref": pointer}, registry=registry)
    found = [f"{kind}: {e.json_path}: {e.message}" for e in validator.iter_errors(event)]
    lower = {name.lower(): value for name, value in headers.items()}
    for ref in hook["post"]["parameters"]:
        parameter = spec["components"]["parameters"][ref["$ref"].rsplit("/", 1)[1]]
        value = lower.get(parameter["name"].lower())
        if value is None:
            found.append(f"{kind}: no {parameter['name']} header")
        elif not re.fullmatch(parameter["schema"]["pattern"], value):
            found.append(f"{kind}: {parameter['name']} {value!r} breaks its pattern")
    return found


class Receiver(FakeServer):
    """Answers the scripted statuses in turn, then 200."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        super().__init__()
        self.statuses = list(statuses or [])

    def handle(self, request: Request, recorded: Recorded) -> Response:
        # Every event delivered is held to the contract (the fixture fails a test on any).
        self.violations += event_problems(recorded.headers, recorded.body)
        status = self.statuses.pop(0) if self.statuses else 200
        return Response("", status=status)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(r.body) for r in self.requests]
