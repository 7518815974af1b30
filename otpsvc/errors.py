"""The exception tree of otpsvc.

Every error a caller can see is an :class:`OtpError`: it carries the HTTP status and a stable
machine ``code`` that the edge renders as an RFC 9457 problem. The core raises these; only ``api``
renders them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class ConfigError(Exception):
    """Settings are missing or invalid; the message lists every problem, one per line."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__(
            "invalid otpsvc configuration:\n" + "\n".join(f"  - {p}" for p in self.problems)
        )


class OtpError(Exception):
    """Root of every error that maps to an HTTP problem response."""

    status: int = 500
    code: str = "internal_error"
    title: str = "Internal Server Error"

    def __init__(self, detail: str | None = None) -> None:
        self.detail = detail or self.title
        super().__init__(self.detail)

    def extensions(self) -> dict[str, object]:
        """Extra members of the problem document, beside type/title/status/detail/code."""
        return {}

    def headers(self) -> dict[str, str]:
        """Extra response headers (for example ``Retry-After``)."""
        return {}


class InvalidRequest(OtpError):
    """The request body or parameters failed validation; ``errors`` names each field."""

    status = 422
    code = "validation_error"
    title = "Unprocessable Content"

    def __init__(self, errors: Mapping[str, Sequence[str]], detail: str | None = None) -> None:
        self.errors = {field: list(messages) for field, messages in errors.items()}
        fields = ", ".join(sorted(self.errors))
        super().__init__(detail or f"invalid field(s): {fields}")

    def extensions(self) -> dict[str, object]:
        return {"errors": self.errors}


class CountryNotAllowed(OtpError):
    """The number is in a country calls may not go to (``OTPSVC_ALLOWED_COUNTRIES``)."""

    status = 403
    code = "country_not_allowed"
    title = "Forbidden"


class NumberTypeNotAllowed(InvalidRequest):
    """Premium-rate, shared-cost and other costly or unknown number types are refused."""

    code = "number_type_not_allowed"


class Unauthorized(OtpError):
    status = 401
    code = "unauthorized"
    title = "Unauthorized"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="otpsvc"'}


class Forbidden(OtpError):
    """A request this endpoint never serves from where it came (the dev page: loopback only)."""

    status = 403
    code = "forbidden"
    title = "Forbidden"


class NotFound(OtpError):
    """Unknown, expired, finished or someone else's verification: indistinguishable on purpose."""

    status = 404
    code = "not_found"
    title = "Not Found"


class RetryLater(OtpError):
    """An error that passes: carries the seconds until the caller may try again.

    ``verification_id`` names the existing verification a refusal is about, so a caller whose
    ``201`` was lost (a gateway timeout) can still find the verification it created.
    """

    def __init__(
        self,
        retry_after: float,
        detail: str | None = None,
        *,
        verification_id: str | None = None,
        limit: str | None = None,
        scope: str | None = None,
    ) -> None:
        self.retry_after = max(1, int(-(-retry_after // 1)))
        self.verification_id = verification_id
        #: The limit that refused (as the limit table of docs/security.md names it) and whose
        #: count it was: ``client`` (this client's share), ``global`` (every client together) or
        #: ``address`` (the connecting address).
        self.limit = limit
        self.scope = scope
        super().__init__(detail)

    def extensions(self) -> dict[str, object]:
        found: dict[str, object] = {"retry_after": self.retry_after}
        if self.verification_id:
            found["verification_id"] = self.verification_id
        if self.limit:
            found["limit"] = self.limit
        if self.scope:
            found["scope"] = self.scope
        return found

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class TooManyRequests(RetryLater):
    """Base of every 429."""

    status = 429
    code = "rate_limited"
    title = "Too Many Requests"


class RateLimited(TooManyRequests):
    code = "rate_limited"


class SpendBudgetExceeded(TooManyRequests):
    """A budget in money (``OTPSVC_BUDGET``, or a client's own ``budget``) would be overspent by
    this send's price: nothing was counted, no call placed. Names the budget and the currency."""

    code = "spend_budget"

    def __init__(
        self,
        retry_after: float,
        detail: str,
        *,
        budget: str,
        currency: str,
        scope: str,
    ) -> None:
        super().__init__(retry_after, detail, limit="budget", scope=scope)
        self.budget = budget
        self.currency = currency

    def extensions(self) -> dict[str, object]:
        return {**super().extensions(), "budget": self.budget, "currency": self.currency}


class PrefixSuspended(TooManyRequests):
    """The conversion rule suspended sends to this number's prefix (or its country) on this
    channel: too few of the codes sent there were entered (see docs/fraud.md). Names the rule
    and the channel; nothing is counted, no call placed."""

    code = "prefix_suspended"

    def __init__(self, retry_after: float, detail: str, *, rule: str, channel: str) -> None:
        scope = "global" if rule.endswith("_all") else "client"
        super().__init__(retry_after, detail, limit="prefix_suspended", scope=scope)
        self.rule = rule
        self.channel = channel

    def extensions(self) -> dict[str, object]:
        return {**super().extensions(), "rule": self.rule, "channel": self.channel}


class MaxAttemptsReached(TooManyRequests):
    code = "max_attempts_reached"


class ResendTooSoon(TooManyRequests):
    code = "resend_too_soon"


class MaxSendsReached(TooManyRequests):
    code = "max_sends_reached"


class TooManyFailedChecks(TooManyRequests):
    """The number has had too many wrong codes today, across all its verifications."""

    code = "too_many_failed_checks"


class NumberBlocked(TooManyRequests):
    """The number's owner said a recent call was not theirs: no calls to it for a while."""

    code = "number_blocked"


class DeliveryFailed(OtpError):
    """No provider placed the call; the verification holds no usable code."""

    status = 502
    code = "delivery_failed"
    title = "Bad Gateway"

    def __init__(self, detail: str, verification_id: str | None = None) -> None:
        self.verification_id = verification_id
        super().__init__(detail)

    def extensions(self) -> dict[str, object]:
        if not self.verification_id:
            return {}
        return {"id": self.verification_id, "verification_id": self.verification_id}


class IdempotencyKeyReused(OtpError):
    """The Idempotency-Key was already used with another request body."""

    status = 422
    code = "idempotency_key_reused"
    title = "Unprocessable Content"


class RequestInProgress(RetryLater):
    """The first request with this Idempotency-Key is still running."""

    status = 409
    code = "request_in_progress"
    title = "Conflict"


class CallsSuspended(RetryLater):
    """The kill switch is on or the call budget is spent: no calls are placed for now."""

    status = 503
    code = "calls_suspended"
    title = "Service Unavailable"


class ProvidersBusy(RetryLater):
    """This worker already has as many starts waiting on voice providers as it may
    (``OTPSVC_PROVIDER_CONCURRENCY``): refused at once, not queued, so that checks and probes
    keep their threads. Nothing was counted and no call was placed; another pod, or this one a
    moment later, takes the retry."""

    status = 503
    code = "providers_busy"
    title = "Service Unavailable"


class StoreUnavailable(OtpError):
    """Redis did not answer in time; nothing was approved and no call was placed."""

    status = 503
    code = "store_unavailable"
    title = "Service Unavailable"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}
