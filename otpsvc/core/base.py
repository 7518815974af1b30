"""The verification lifecycle's shared parts: its policy and what every step uses.

Every decision that must hold under concurrency is taken inside one Lua script in the store; the
steps generate codes, hash them, place calls and turn store outcomes into results or errors. All
time comes from one clock, so expiry is tested without sleeping.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import phonenumbers

from otpsvc import metrics
from otpsvc.config import Settings, TestNumber
from otpsvc.config.model import LadderStep
from otpsvc.core.abuse import AbusePolicy
from otpsvc.core.keyring import Keyring
from otpsvc.core.models import Verification
from otpsvc.errors import NotFound
from otpsvc.store import VerificationStore
from otpsvc.store.conversion import ConversionStore
from otpsvc.store.velocity import VelocityStore
from otpsvc.voice.dispatch import Dispatcher

Clock = Callable[[], float]


@dataclass(frozen=True)
class Policy:
    code_length: int
    code_ttl_ms: int
    max_attempts: int
    max_sends: int
    resend_cooldown_ms: int
    default_locale: str
    deny_block_ms: int
    deny_clients: int
    max_failures: int
    max_failures_all: int
    slow_ms: int
    #: The modes a start may ask for.
    modes: frozenset[str] = frozenset({"code", "keypress", "match"})
    #: The brand calls speak, and whether a start may name its own.
    brand: str = "otpsvc"
    request_brand: bool = False
    call_repeats: int = 2
    #: The providers tried in order, and per country calling code, the route instead.
    providers: tuple[str, ...] = ()
    routes: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    #: The escalation ladder (one step or none: one call, by the routes).
    ladder: tuple[LadderStep, ...] = ()
    #: The shortest code a start may ask for (``code_length`` of its request).
    min_code_length: int = 4
    #: The client file's spoken scripts (see :func:`otpsvc.voice.templates.choose_template`).
    templates: Mapping[str, Mapping[str, Mapping[str, str]]] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings, own: frozenset[str] = frozenset()) -> Policy:
        """The policy of ``settings`` (a client's: ``Settings.for_client``, with ``own`` the
        keys its table sets)."""
        return cls(
            code_length=settings.code_length,
            code_ttl_ms=settings.code_ttl * 1000,
            max_attempts=settings.max_check_attempts,
            max_sends=settings.max_sends,
            resend_cooldown_ms=settings.resend_cooldown * 1000,
            default_locale=settings.default_locale,
            deny_block_ms=settings.deny_block * 1000,
            deny_clients=settings.deny_clients,
            max_failures=settings.max_failed_checks_per_number,
            max_failures_all=settings.max_failed_checks_all_clients,
            slow_ms=settings.failed_checks_slowdown * 1000,
            modes=settings.modes,
            brand=settings.brand,
            call_repeats=settings.call_repeats,
            request_brand=settings.request_brand,
            providers=settings.providers,
            routes=settings.routes,
            min_code_length=settings.code_length if "code_length" in own else 4,
            ladder=settings.ladder,
            templates=settings.templates,
        )


class ServiceBase:
    """What every part of the lifecycle shares: the store, the keys, the providers, the
    policies and the clock."""

    def __init__(
        self,
        *,
        store: VerificationStore,
        keyring: Keyring,
        dispatcher: Dispatcher,
        policy: Policy,
        abuse: AbusePolicy,
        velocity: VelocityStore,
        clock: Clock,
        test_numbers: Mapping[str, TestNumber] | None = None,
        allowed_countries: frozenset[str] | None = None,
        client_policies: Mapping[str, Policy] | None = None,
        client_abuse: Mapping[str, AbusePolicy] | None = None,
        conversion: ConversionStore | None = None,
    ) -> None:
        """``policy`` and ``abuse`` apply to every client but those of ``client_policies`` and
        ``client_abuse`` (the client file's); ``conversion``: the conversion rule's store (None:
        the rule is off)."""
        self.conversion = conversion
        self.client_policies = dict(client_policies or {})
        self.client_abuse = dict(client_abuse or {})
        self.test_numbers = dict(test_numbers or {})
        self.allowed_countries = allowed_countries
        self.abuse = abuse
        self.velocity = velocity
        self.store = store
        self.keyring = keyring
        self.dispatcher = dispatcher
        self.policy = policy
        self.clock = clock

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def policy_for(self, client: str) -> Policy:
        """The policy of this client: its own from the client file, else everyone's."""
        return self.client_policies.get(client, self.policy)

    def abuse_for(self, client: str) -> AbusePolicy:
        """This client's screening, shares and budget."""
        return self.client_abuse.get(client, self.abuse)

    def _country_of(self, masked: str) -> str:
        """The country label of a masked number (``+234*******567``): its calling code's region."""
        digits = masked[1:].split("*", 1)[0]
        region = (
            phonenumbers.region_code_for_country_code(int(digits)) if digits.isdigit() else None
        )
        return metrics.country_label(region, self.allowed_countries)

    def get(self, *, client: str, verification_id: str) -> Verification:
        fields = self.store.load(verification_id)
        if not fields or fields.get("c") != client:
            raise NotFound("no verification with this id")
        return self._to_verification(verification_id, fields)

    def _to_verification(self, verification_id: str, f: dict[str, str]) -> Verification:
        # Only a verification with a ladder costs the read of its next step's time.
        next_at = self.store.next_step_at(verification_id) if f.get("ld") else None
        return Verification.from_record(
            verification_id,
            f,
            max_attempts=self.policy_for(f["c"]).max_attempts,
            now_ms=self._now_ms(),
            next_step_at=next_at,
        )
