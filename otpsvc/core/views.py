"""The JSON view of a verification: what the API answers and what the events carry, alike."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from otpsvc.core.models import Verification
from otpsvc.money import show


def timestamp(epoch: float) -> str:
    """RFC 3339, UTC, millisecond precision."""
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def verification_view(v: Verification, currency: str | None = None) -> dict[str, Any]:
    """The JSON of a verification; with a price file (``currency``), what its sends cost."""
    view: dict[str, Any] = {
        "id": v.id,
        "status": v.status.value,
        "phone": v.phone_masked,
        "mode": v.mode,
        "code_length": v.code_length,
        "locale": v.locale,
        "client_ref": v.client_ref,
        "created_at": timestamp(v.created_at),
        "expires_at": timestamp(v.expires_at),
        "attempts_remaining": v.attempts_remaining,
        "sends": v.sends,
        "resend_available_at": timestamp(v.resend_at),
        "provider": v.provider,
        "delivery": {"status": v.delivery_status, "provider_message_id": v.provider_message_id},
    }
    if v.mode != "code":
        view["answer"] = v.answer
    if v.ladder is not None:
        calls = v.ladder.calls
        view["ladder"] = {
            "steps": [
                {
                    "channel": call.channel,
                    "provider": call.provider,
                    "placed_at": timestamp(call.placed_at),
                    # The last call's status is the delivery's; an earlier one's, why it moved on.
                    "status": call.next_because
                    or (v.delivery_status if i == len(calls) - 1 else None),
                    **({"cost": show(call.cost)} if currency and call.cost is not None else {}),
                }
                for i, call in enumerate(calls)
            ],
            "next_step_at": None if v.ladder.next_at is None else timestamp(v.ladder.next_at),
            "stopped": v.ladder.stopped,
        }
    if currency:
        view["cost"] = {"amount": show(v.cost or 0), "currency": currency}
    if v.reported_cost is not None and v.reported_currency:
        # What the provider said, kept beside the quote for reconciliation.
        view["reported_cost"] = {"amount": show(v.reported_cost), "currency": v.reported_currency}
    return view
