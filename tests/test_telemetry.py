"""OpenTelemetry spans (the otel extra), read back from the SDK's in-memory exporter."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from otpsvc.requestcontext import parse_traceparent
from otpsvc.telemetry import setup_from_environment
from tests.conftest import PHONE, Api
from tests.fakes.termii import FakeTermii

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
_exporter = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The process's tracer provider (set once) with an in-memory exporter, emptied per test."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_exporter))
        trace.set_tracer_provider(provider)
    _exporter.clear()
    yield _exporter
    _exporter.clear()


def by_name(finished: tuple[ReadableSpan, ...]) -> dict[str, list[ReadableSpan]]:
    named: dict[str, list[ReadableSpan]] = {}
    for s in finished:
        named.setdefault(s.name, []).append(s)
    return named


def test_a_start_is_one_trace_under_the_callers(api: Api, termii: FakeTermii, spans):
    headers = {"traceparent": f"00-{TRACE}-{PARENT}-01"}
    api.request("POST", "/otp/start", json={"phone": PHONE}, headers=headers)
    named = by_name(spans.get_finished_spans())
    (http,) = named["HTTP POST /otp/start"]
    assert f"{http.context.trace_id:032x}" == TRACE
    assert http.parent is not None
    assert f"{http.parent.span_id:016x}" == PARENT
    assert http.attributes["http.response.status_code"] == 201
    # On one Redis the request limits run in the velocity round trip (one chained script).
    for name in ("redis velocity", "redis reserve", "redis finalize", "provider termii",
                 "argon2 hash"):  # fmt: skip
        (child,) = named[name]
        assert child.context.trace_id == http.context.trace_id
    # Calls to other services are CLIENT spans (a dependency in a trace view); argon2 is not.
    for name in ("redis velocity", "redis reserve", "redis finalize", "provider termii"):
        assert named[name][0].kind is SpanKind.CLIENT, name
    assert named["argon2 hash"][0].kind is SpanKind.INTERNAL
    (provider,) = named["provider termii"]
    assert provider.parent is not None
    assert provider.parent.span_id == http.context.span_id
    sent = parse_traceparent(termii.calls[-1].headers["Traceparent"])
    assert sent is not None
    assert (sent.trace_id, sent.parent_id) == (TRACE, f"{provider.context.span_id:016x}")


def test_a_check_has_its_argon2_and_script_spans(api: Api, termii: FakeTermii, spans):
    vid = api.start().get_json()["id"]
    spans.clear()
    api.check(vid, termii.last_code())
    named = by_name(spans.get_finished_spans())
    (http,) = named["HTTP POST /otp/check"]
    # The request limits and the attempt: one chained script on one Redis.
    for name in ("redis request_limits+begin_check", "argon2 verify", "redis approve"):
        (child,) = named[name]
        assert child.context.trace_id == http.context.trace_id


def test_tracing_is_off_without_otel_variables(monkeypatch: pytest.MonkeyPatch):
    for name in [n for n in __import__("os").environ if n.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    assert setup_from_environment() is False
