"""The provider interface: what a voice provider takes, returns and raises.

A provider places one call that reads a code to a phone. It knows nothing about Flask, Redis or the
verification lifecycle. Every failure leaves a provider as one :class:`ProviderError`.
"""

from __future__ import annotations

import ipaddress
import json as jsonlib
import logging
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol
from urllib.parse import urlencode, urlsplit

import urllib3
from marshmallow import ValidationError, fields, validate
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)

from otpsvc.requestcontext import outgoing_traceparent
from otpsvc.telemetry import current_traceparent
from otpsvc.voice.templates import Spoken

log = logging.getLogger("otpsvc.voice")

#: Four or more digits (optional "+" and separators): anything that may be a code or a number.
DIGIT_RUN = re.compile(r"\+?\d(?:[\s.-]?\d){3,}")


@dataclass(frozen=True)
class CallRequest:
    """One call to place. ``phone`` is E.164 with the leading ``+``; ``code`` is the plain code.

    In ``keypress`` mode there is no code: the call asks the person to press 1 (it was me) or 9
    (it was not), and the provider reports the key on the callback that ``dtmf_token`` names.
    In ``match`` mode the call asks for the two digits the app's screen shows (``match``, which
    only the dev console keeps, to show in its inbox; the call never says them) or 9.
    """

    verification_id: str
    phone: str
    code: str
    locale: str
    mode: str = "code"
    #: Tokens of this send's callback URLs, one per endpoint (providers that call back by URL).
    status_token: str = ""
    dtmf_token: str = ""
    #: The API client the call is for (the dev inbox shows each client only its own calls).
    client: str = ""
    #: The number's country as a metrics label (an allowed ISO code, or ``other``).
    country: str = "other"
    #: What the call says: the brand it names ('' for the provider's default), how long the
    #: code lives, and the client's template for this locale and mode (None: the built-in one).
    brand: str = ""
    #: How often the code is read (0: the provider's default, ``OTPSVC_CALL_REPEATS``).
    repeats: int = 0
    minutes: int = 0
    template: str | None = None
    template_source: str = "built-in"
    #: ``voice`` (a call) or ``sms`` (a text message: an escalation ladder's step).
    channel: str = "voice"
    #: Which send of the verification this is (1 for the first call).
    send: int = 1
    #: Match mode: the digits the app shows for this send ('' otherwise, and on a ladder's
    #: later call, which asks for the digits already shown).
    match: str = ""

    def spoken(self, default_brand: str, locale: str | None = None) -> Spoken:
        """What to say, ready to render. A provider that can only speak another ``locale``
        than the call's says that locale's built-in script."""
        own = locale is None or locale == self.locale
        return Spoken(
            mode="sms" if self.channel == "sms" else self.mode,
            locale=self.locale if locale is None else locale,
            brand=self.brand or default_brand,
            minutes=self.minutes,
            template=self.template if own else None,
            source=self.template_source if own else "built-in",
        )

    def __repr__(self) -> str:
        # The code and the number must never reach a log line through a stray repr().
        return (
            f"CallRequest(verification_id={self.verification_id!r}, locale={self.locale!r}, "
            f"mode={self.mode!r})"
        )


@dataclass(frozen=True)
class CallResult:
    """The provider accepted the call. ``status`` is the delivery status to show the caller."""

    provider: str
    message_id: str | None
    status: str = "queued"
    #: What the provider said the send cost, as it said it (a decimal string in its account's
    #: currency); None where it says nothing (see docs/money.md, "Reconciliation").
    reported_price: str | None = None
    reported_currency: str | None = None


class ProviderError(Exception):
    """The provider did not accept the call.

    ``ambiguous`` is true when the request may have reached the provider and been acted on (a read
    timeout, a dropped connection after sending): the call may be ringing; it must not be repeated.
    ``provider_code`` and ``provider_text`` keep the provider's own words, never the code.
    """

    def __init__(
        self,
        provider: str,
        reason: str,
        *,
        provider_code: str | None = None,
        provider_text: str | None = None,
        http_status: int | None = None,
        ambiguous: bool | None = None,
        health: bool | None = None,
    ) -> None:
        self.provider = provider
        self.reason = reason
        self.provider_code = provider_code
        # Providers may echo the number or the code they were given; neither may reach a log.
        self.provider_text = DIGIT_RUN.sub("[digits]", provider_text) if provider_text else None
        self.http_status = http_status
        #: A gateway error (502, 504) may come after the provider queued the call.
        self.ambiguous = http_status in GATEWAY_STATUSES if ambiguous is None else ambiguous
        #: Whether the failure says something about the provider's health (its circuit breaker
        #: counts only these): transport failures, timeouts, 5xx, authentication, throttling.
        #: A refusal of one recipient (an unassigned number, a per-number limit) does not.
        self.health = _unhealthy_status(http_status) if health is None else health
        parts = [f"{provider}: {reason}"]
        if http_status is not None:
            parts.append(f"HTTP {http_status}")
        if provider_code is not None:
            parts.append(f"code {provider_code}")
        if self.provider_text:
            parts.append(repr(self.provider_text[:200]))
        super().__init__(", ".join(parts))


#: Answers from a gateway in front of the provider: the call may have been queued behind it.
GATEWAY_STATUSES = frozenset({502, 504})
#: Statuses that say the provider (or our account with it) is not working for anyone.
ACCOUNT_STATUSES = frozenset({401, 402, 403, 407, 429})


def _unhealthy_status(http_status: int | None) -> bool:
    return http_status is not None and (http_status >= 500 or http_status in ACCOUNT_STATUSES)


class VoiceProvider(Protocol):
    """What the dispatcher needs of a provider."""

    @property
    def name(self) -> str: ...

    @property
    def numeric_code(self) -> bool:
        """True when the provider takes the code as a number, so it must not start with 0."""
        ...

    @property
    def supports_dtmf(self) -> bool:
        """True when the provider reports the keys pressed during a call (keypress mode)."""
        ...

    @property
    def supports_match(self) -> bool:
        """True when the provider collects two keys pressed during a call and reports them
        together (match mode)."""
        ...

    @property
    def reports_by_message_id(self) -> bool:
        """True when this provider's verified webhooks name a call only by its message id."""
        ...

    @property
    def supports_sms(self) -> bool:
        """True when the provider also sends the code by SMS (an escalation ladder's step)."""
        ...

    def place_call(self, call: CallRequest) -> CallResult: ...

    def send_sms(self, call: CallRequest) -> CallResult:
        """Send the code by SMS (``call.channel == "sms"``)."""
        ...

    def spoken_text(self, call: CallRequest) -> str | None:
        """The text (or SSML) this provider would be sent for ``call``; None when it speaks
        words of its own."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Timeouts:
    connect: float
    read: float


@dataclass(frozen=True)
class Speech:
    """How calls speak: the brand they name and how often the code is repeated."""

    brand: str
    repeats: int = 2


class HttpAnswer:
    """A provider's HTTP answer, as the provider modules read it: status, text and JSON."""

    def __init__(self, status_code: int, body: bytes) -> None:
        self.status_code = status_code
        self.content = body

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body as JSON; ``ValueError`` when it is not JSON."""
        return jsonlib.loads(self.content)


class HttpProvider:
    """Shared plumbing of the HTTP providers: one keep-alive connection pool, explicit
    timeouts, no retries, no redirects, no proxy from the environment.

    The POST that places a call is never retried here: a repeated request can ring a phone twice.
    It goes through urllib3 (what ``requests`` is built on) directly: a provider request is one
    POST with a JSON or form body, and ``requests``' session machinery (setting merges, cookies,
    hooks) cost about 0.5 ms of CPU per call on top of it (``bench/parts.py``).
    """

    name: ClassVar[str]
    numeric_code: ClassVar[bool] = False
    supports_dtmf: bool = False
    supports_match: bool = False
    supports_sms: bool = False
    reports_by_message_id: bool = False

    def spoken_text(self, call: CallRequest) -> str | None:
        return None

    def send_sms(self, call: CallRequest) -> CallResult:
        raise ProviderError(self.name, "this provider sends no SMS here", health=False)

    def __init__(self, timeouts: Timeouts) -> None:
        self.timeouts = timeouts
        self._timeout = urllib3.Timeout(connect=timeouts.connect, read=timeouts.read)
        # maxsize: connections kept per provider host, for threaded workers.
        self.pool = urllib3.PoolManager(num_pools=4, maxsize=8, retries=False)

    def close(self) -> None:
        self.pool.clear()

    def post(
        self,
        url: str,
        *,
        json: Any = None,
        data: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> HttpAnswer:
        """POST once; turn every transport failure into a :class:`ProviderError`."""
        sent_headers = {"User-Agent": "otpsvc", **(headers or {})}
        traceparent = current_traceparent() or outgoing_traceparent()
        if traceparent:
            sent_headers["traceparent"] = traceparent
        body: bytes | None = None
        if json is not None:
            body = jsonlib.dumps(json, separators=(",", ":")).encode()
            sent_headers["Content-Type"] = "application/json"
        elif data is not None:
            body = urlencode(data).encode()
            sent_headers["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            answer = self.pool.request(
                "POST",
                url,
                body=body,
                headers=sent_headers,
                timeout=self._timeout,
                retries=False,
                redirect=False,
            )
        except NewConnectionError as exc:
            # Refused or unresolvable: nothing reached the provider (a subclass of the connect
            # timeout in urllib3, so it is told apart first).
            raise ProviderError(
                self.name, "connection failed", ambiguous=False, health=True
            ) from exc
        except ConnectTimeoutError as exc:
            raise ProviderError(self.name, "connect timeout", ambiguous=False, health=True) from exc
        except ReadTimeoutError as exc:
            raise ProviderError(self.name, "read timeout", ambiguous=True, health=True) from exc
        except ProtocolError as exc:
            # The connection dropped after the request was sent: the call may be placed.
            raise ProviderError(
                self.name, "connection failed", ambiguous=True, health=True
            ) from exc
        except HTTPError as exc:
            raise ProviderError(
                self.name, f"request failed: {type(exc).__name__}", ambiguous=False, health=True
            ) from exc
        return HttpAnswer(answer.status, answer.data)


def https_problem(url: str, *, allow_http: bool = False) -> str | None:
    """Why a URL that secrets go to is not acceptable: https, or plain http only to this
    machine (a local stand-in) or when ``allow_http``; None when it is fine."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an https:// URL"
    if parts.scheme == "https" or allow_http:
        return None
    host = parts.hostname
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    return None if loopback else "must be an https:// URL (plain http only to a loopback address)"


def _https_unless_loopback(url: str) -> None:
    problem = https_problem(url)
    if problem:
        raise ValidationError(problem)


def base_url_field(variable: str, default: str) -> fields.Url:
    """A provider's base URL setting: https, or http to a loopback address (local servers)."""
    return fields.Url(
        data_key=variable,
        load_default=default,
        schemes={"http", "https"},
        require_tld=False,
        validate=_https_unless_loopback,
    )


def secret_field(variable: str, *, required: bool = True) -> fields.String:
    """A provider's API key or signing secret: at least 8 characters."""
    if required:
        return fields.String(data_key=variable, required=True, validate=validate.Length(min=8))
    return fields.String(data_key=variable, load_default=None, validate=validate.Length(min=8))


def json_body(response: HttpAnswer) -> Any:
    """The JSON body, or None when the body is not JSON."""
    try:
        return response.json()
    except ValueError:
        return None


class MappingSetting(fields.Field[dict[str, str]]):
    """A ``key=value,key=value`` setting -> {key: value}: every key one of ``keys``, every value
    matching ``value_pattern``, no key twice. What is given is laid over ``defaults``."""

    def __init__(
        self,
        variable: str,
        *,
        keys: Collection[str],
        value_pattern: re.Pattern[str],
        what: str,
        defaults: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(data_key=variable, load_default=dict(defaults or {}))
        self.keys = frozenset(keys)
        self.value_pattern = value_pattern
        self.what = what
        self.defaults = dict(defaults or {})

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, str):
            raise ValidationError("must be key=value pairs separated by commas")
        given: dict[str, str] = {}
        for part in (p.strip() for p in value.split(",")):
            if not part:
                continue
            key, sep, item = (s.strip() for s in part.partition("="))
            if not sep or not key or not item:
                raise ValidationError(f"{part!r}: each entry must be key=value")
            if key not in self.keys:
                raise ValidationError(f"{key!r} is not one of {', '.join(sorted(self.keys))}")
            if key in given:
                raise ValidationError(f"{key!r} is given twice")
            if not self.value_pattern.fullmatch(item):
                raise ValidationError(f"{key}={item!r}: not a valid {self.what}")
            given[key] = item
        return {**self.defaults, **given}
