"""Optional OpenTelemetry tracing: spans for each HTTP request, Redis script, provider call and
argon2 run.

With ``pip install 'otpsvc[otel]'`` and any ``OTEL_*`` variable set, :func:`setup_from_environment`
(run by ``otpsvc serve`` in each gunicorn worker after the fork, and by ``otpsvc dev``) installs
the SDK, configured by the standard variables only: ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_EXPORTER`` (``otlp``, the default, ``console`` or
``none``), ``OTEL_EXPORTER_OTLP_*``. Without the extra, or without a tracer provider, every span
here is a no-op that costs a function call.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

try:
    from opentelemetry import trace
except ImportError:  # the otel extra is not installed
    trace = None  # type: ignore[assignment]

log = logging.getLogger("otpsvc.telemetry")


def recording() -> bool:
    """True when a tracer provider is installed (by :func:`setup_from_environment` or by the
    host program): without one every span would be a no-op, so none is made at all. A request
    makes about ten spans; the API's no-op spans cost 8 µs of CPU each."""
    if trace is None:
        return False
    return not isinstance(
        trace.get_tracer_provider(), (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
    )


@contextmanager
def span(name: str, *, client: bool = False, **attributes: str | int) -> Iterator[Any]:
    """A span named ``name`` under the current one (a no-op without a tracer provider).
    ``client``: a call to another service (Redis, a provider), of kind CLIENT, so that tracing
    back ends draw it as a dependency."""
    if not recording():
        yield None
        return
    assert trace is not None
    kind = trace.SpanKind.CLIENT if client else trace.SpanKind.INTERNAL
    tracer = trace.get_tracer("otpsvc")
    with tracer.start_as_current_span(name, kind=kind, attributes=attributes) as current:
        yield current


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span, when OpenTelemetry records one."""
    if not recording():
        return None
    assert trace is not None
    current = trace.get_current_span()
    # Without an SDK the API hands back the caller's own context: not a span of ours.
    if not current.is_recording():
        return None
    context = current.get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def begin_server_span(name: str, headers: dict[str, str]) -> Any:
    """Start the span of one HTTP request, continuing the caller's ``traceparent``; the handle
    for :func:`end_server_span`, or None without a tracer provider."""
    if not recording():
        return None
    assert trace is not None
    from opentelemetry import context, propagate

    # W3C header names are case-insensitive; the propagator's dict getter is not.
    parent = propagate.extract({name.lower(): value for name, value in headers.items()})
    current = trace.get_tracer("otpsvc").start_span(
        name, context=parent, kind=trace.SpanKind.SERVER
    )
    token = context.attach(trace.set_span_in_context(current))
    return (current, token)


def set_status(handle: Any, status: int) -> None:
    if handle is not None:
        handle[0].set_attribute("http.response.status_code", status)


def end_server_span(handle: Any) -> None:
    if handle is None:
        return
    from opentelemetry import context

    current, token = handle
    context.detach(token)
    current.end()


class TracedScript:
    """A registered Lua script whose every call is a span ``redis <name>``."""

    def __init__(self, name: str, script: Any) -> None:
        self.name = name
        self._script = script
        self.sha: str = script.sha
        #: The Lua source, for SCRIPT LOAD where a pipeline met NOSCRIPT.
        self.text: str = script.script

    def __call__(self, *, keys: list[str], args: list[Any]) -> Any:
        if not recording():
            return self._script(keys=keys, args=args)
        with span(
            f"redis {self.name}", client=True, **{"db.system": "redis", "db.operation": "EVALSHA"}
        ):
            return self._script(keys=keys, args=args)


def setup_from_environment() -> bool:
    """Install the OpenTelemetry SDK from the ``OTEL_*`` variables; False when not asked for or
    not installed."""
    if not any(name.startswith("OTEL_") for name in os.environ):
        return False
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    try:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        log.warning("OTEL_* variables are set but the otel extra is not installed")
        return False
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    provider = TracerProvider()
    if exporter_name == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    elif exporter_name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    elif exporter_name != "none":
        log.warning(
            "OTEL_TRACES_EXPORTER=%s is not supported; no spans are exported", exporter_name
        )
    assert trace is not None
    trace.set_tracer_provider(provider)
    return True
