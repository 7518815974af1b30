"""Request schemas and response shapes of the HTTP API (documented in openapi.yaml)."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate

from otpsvc.config.model import BRAND
from otpsvc.core.models import CheckOutcome
from otpsvc.errors import InvalidRequest
from otpsvc.phones import InvalidPhone, Phone, parse_phone

VERIFICATION_ID = re.compile(r"\A[0-9a-f]{36}\Z", re.ASCII)


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


def _ip_address(value: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError as exc:
        raise ValidationError("must be an IPv4 or IPv6 address such as 198.51.100.7") from exc


class EndUser(Schema):
    """The person a backend or gateway calls on behalf of: what per-person limits count."""

    ip = fields.String(validate=[validate.Length(max=45), _ip_address])
    user_id = fields.String(
        validate=[
            validate.Length(1, 128),
            validate.Regexp(r"\A[\x20-\x7e]+\Z", error="must be printable ASCII"),
        ]
    )


class StartRequest(Schema):
    phone = PhoneField(required=True)
    code_length = fields.Integer(strict=True, validate=validate.Range(4, 8))
    locale = fields.String(
        validate=validate.Regexp(
            r"\A[a-z]{2}(-[A-Z]{2})?\Z", error="must be a language tag such as 'en' or 'fr-FR'"
        )
    )
    mode = fields.String(
        load_default="code",
        validate=validate.OneOf(
            ["code", "keypress", "match"], error="must be 'code', 'keypress' or 'match'"
        ),
    )
    client_ref = fields.String(
        validate=[
            validate.Length(1, 64),
            validate.Regexp(r"\A[\x20-\x7e]+\Z", error="must be printable ASCII"),
        ]
    )
    end_user = fields.Nested(EndUser)
    #: The brand this call speaks (resellers), where the client is allowed one.
    brand = fields.String(
        validate=validate.Regexp(BRAND, error="1-40 letters, digits (0-9), spaces and . & ' -")
    )


class CheckRequest(Schema):
    id = fields.String(
        required=True,
        validate=validate.Regexp(VERIFICATION_ID, error="must be a verification id"),
    )
    code = fields.String(
        required=True,
        validate=validate.Regexp(r"\A[0-9]{4,8}\Z", flags=re.ASCII, error="must be 4 to 8 digits"),
    )
    end_user = fields.Nested(EndUser)


def load(schema: Schema, body: Any) -> dict[str, Any]:
    """Validate a JSON body; errors become one 422 problem naming each field."""
    try:
        data: dict[str, Any] = schema.load(body)
    except ValidationError as exc:
        messages = exc.normalized_messages()  # type: ignore[no-untyped-call]
        errors: dict[str, list[str]] = {}
        for field, value in messages.items():
            _flatten(errors, "body" if field == "_schema" else str(field), value)
        raise InvalidRequest(errors) from exc
    return data


def _flatten(errors: dict[str, list[str]], path: str, value: Any) -> None:
    """Nested errors under dotted names: ``end_user.ip``, ``end_user.nickname``."""
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(errors, path if key == "_schema" else f"{path}.{key}", inner)
    elif isinstance(value, list):
        errors.setdefault(path, []).extend(str(v) for v in value)
    else:
        errors.setdefault(path, []).append(str(value))


def check_view(outcome: CheckOutcome) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": outcome.id,
        "status": outcome.status.value,
        "valid": outcome.valid,
    }
    if not outcome.valid:
        body["attempts_remaining"] = outcome.attempts_remaining
    return body
