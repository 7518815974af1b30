"""Events to the app: signed Standard Webhooks, written with the change they report, sent by
workers.

Each API client may have one webhook URL (``OTPSVC_EVENT_WEBHOOKS``) and its signing secrets
(``OTPSVC_EVENT_WEBHOOK_SECRETS``, ``whsec_...``). An event is written by the Lua script that
makes the change it reports, in the same atomic step (``store/scripts/_events.lua``): into the
stream of the verification's event shard, which lives in the verification's own hash slot (one
of :data:`~otpsvc.store.shards.SHARDS`; see :mod:`otpsvc.store.shards`). A committed approval
always has its event, whatever process dies when; an event never tells of a change that did not
happen. The event holds a snapshot of the record (never the code's verifier); the worker renders
the body from it, the same on every try.

Workers (``otpsvc worker``; several may run, each a consumer of the ``senders`` group of every
shard) deliver them, in a pool of threads per API client so that one client's slow receiver
never delays another's events: a 2xx answer acknowledges an event; any other answer, a timeout
or a refused connection leaves it pending with its next try's due time in a sorted set (back-off
exponential from ``OTPSVC_EVENT_RETRY_BASE`` seconds, capped at an hour, with jitter), from which
whichever worker is alive takes it when it is due. An event left pending by a worker that died
is taken over once it has sat longer than any delivery can take. Past
``OTPSVC_EVENT_RETRY_WINDOW`` (24 hours) an event is kept as failed: ``otpsvc events failed``
lists those, ``otpsvc events replay ID`` queues one again (into the replay stream, which the
workers read as one more shard).
"""

from otpsvc.events.queue import (
    GROUP,
    OUTAGES,
    EventQueue,
    EventSettings,
    _rfc3339,
    render,
)
from otpsvc.events.worker import EventWorker, block_ms_for, serve_worker_metrics

__all__ = [
    "GROUP",
    "OUTAGES",
    "EventQueue",
    "EventSettings",
    "EventWorker",
    "_rfc3339",
    "block_ms_for",
    "render",
    "serve_worker_metrics",
]
