"""The current request's id and W3C trace context, for every layer (logs, providers).

Set by :mod:`otpsvc.api.tracing` for each request; read anywhere without Flask.
"""

from __future__ import annotations

import contextvars
import re
import secrets
from dataclasses import dataclass

REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}", re.ASCII)
#: version-traceid-parentid-flags; version ff is invalid; later versions may append fields.
TRACEPARENT = re.compile(
    r"(?!ff)([0-9a-f]{2})-(?!0{32})([0-9a-f]{32})-(?!0{16})([0-9a-f]{16})-([0-9a-f]{2})(-.*)?",
    re.ASCII,
)


@dataclass(frozen=True)
class TraceContext:
    trace_id: str
    parent_id: str
    flags: str

    def child(self) -> str:
        """A ``traceparent`` for an outgoing request: this trace, a new span id."""
        return f"00-{self.trace_id}-{secrets.token_hex(8)}-{self.flags}"


request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "otpsvc_request_id", default=None
)
trace_var: contextvars.ContextVar[TraceContext | None] = contextvars.ContextVar(
    "otpsvc_trace", default=None
)


def parse_traceparent(value: str | None) -> TraceContext | None:
    match = TRACEPARENT.fullmatch(value.strip()) if value else None
    if match is None or (match.group(1) == "00" and match.group(5)):
        return None
    return TraceContext(match.group(2), match.group(3), match.group(4))


def current_request_id() -> str | None:
    return request_id_var.get()


def outgoing_traceparent() -> str | None:
    """The ``traceparent`` to send on a provider request, or None outside a request."""
    context = trace_var.get()
    return context.child() if context else None
