"""Redis persistence of verifications."""

from otpsvc.store.redis_store import CheckTicket, Reservation, VerificationStore, connect

__all__ = ["CheckTicket", "Reservation", "VerificationStore", "connect"]
