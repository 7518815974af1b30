"""The verification lifecycle: start (or resend), check, read and cancel, and what providers
report about their calls.

One class, :class:`VerificationService`, made of its steps, each in a module of its own:
``start`` (screening, limits, reservation, the call), ``check`` (a code compared once; cancel),
``callbacks`` (delivery reports, key presses), ``ladder`` (the escalation steps), over ``base``
(the policy, reading a verification, the clock).
"""

from __future__ import annotations

from otpsvc.core.base import Clock, Policy
from otpsvc.core.callbacks import ProviderCallbacks
from otpsvc.core.check import Checking
from otpsvc.core.ladder import Escalating

__all__ = ["Clock", "Policy", "VerificationService"]


class VerificationService(Escalating, Checking, ProviderCallbacks):
    """Start, check, read and cancel verifications; apply providers' reports."""
