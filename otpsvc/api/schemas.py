"""Request schemas and response shapes of the HTTP API (documented in openapi.yaml)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate

from otpsvc.core.models import CheckOutcome, Verification
from otpsvc.core.phones import InvalidPhone, Phone, parse_phone
from otpsvc.errors import InvalidRequest

VERIFICATION_ID = re.compile(r"^[0-9a-f]{36}$", re.ASCII)


class PhoneField(fields.String):
    """An E.164 number, parsed and normalised."""

    def _deserialize(  # type: ignore[override]
        self, value: Any, attr: str | None, data: Any, **kwargs: Any
    ) -> Phone:
        text = super()._deserialize(value, attr, data, **kwargs)
        if len(text) > 20:
            raise ValidationError("must be an E.164 number such as +2348031234567")
        try:
            return parse_phone(text)
        except InvalidPhone as exc:
            raise ValidationError(str(exc)) from exc


class StartRequest(Schema):
    phone = PhoneField(required=True)
    code_length = fields.Integer(strict=True, validate=validate.Range(4, 8))
    locale = fields.String(
        validate=validate.Regexp(
            r"^[a-z]{2}(-[A-Z]{2})?$", error="must be a language tag such as 'en' or 'fr-FR'"
        )
    )
    mode = fields.String(
        load_default="code",
        validate=validate.OneOf(["code", "keypress"], error="must be 'code' or 'keypress'"),
    )
    client_ref = fields.String(
        validate=[
            validate.Length(1, 64),
            validate.Regexp(r"^[\x20-\x7e]+$", error="must be printable ASCII"),
        ]
    )


class CheckRequest(Schema):
    id = fields.String(
        required=True,
        validate=validate.Regexp(VERIFICATION_ID, error="must be a verification id"),
    )
    code = fields.String(
        required=True,
        validate=validate.Regexp(r"^[0-9]{4,8}$", flags=re.ASCII, error="must be 4 to 8 digits"),
    )


def load(schema: Schema, body: Any) -> dict[str, Any]:
    """Validate a JSON body; errors become one 422 problem naming each field."""
    try:
        data: dict[str, Any] = schema.load(body)
    except ValidationError as exc:
        messages = exc.normalized_messages()  # type: ignore[no-untyped-call]
        errors = {
            ("body" if field == "_schema" else field): _flatten(value)
            for field, value in messages.items()
        }
        raise InvalidRequest(errors) from exc
    return data


def _flatten(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    if isinstance(value, dict):
        return [f"{k}: {m}" for k, v in value.items() for m in _flatten(v)]
    return [str(value)]


def timestamp(epoch: float) -> str:
    """RFC 3339, UTC, millisecond precision."""
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def verification_view(v: Verification) -> dict[str, Any]:
    return {
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


def check_view(outcome: CheckOutcome) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": outcome.id,
        "status": outcome.status.value,
        "valid": outcome.valid,
    }
    if not outcome.valid:
        body["attempts_remaining"] = outcome.attempts_remaining
    return body
