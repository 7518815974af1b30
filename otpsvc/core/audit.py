"""Audit events: one structured line each, on the ``otpsvc.audit`` logger.

Only masked numbers, verification ids, client names and outcomes go in: never a code, a verifier,
a full number or a key. The fields ride on the record (``record.audit``) for the JSON formatter.
"""

from __future__ import annotations

import logging

from otpsvc.requestcontext import current_request_id

log = logging.getLogger("otpsvc.audit")


def audit(event: str, **fields: object) -> None:
    request_id = current_request_id()
    extra = {"request_id": request_id} if request_id else {}
    log.info(event, extra={"audit": {"event": event, **fields, **extra}})
