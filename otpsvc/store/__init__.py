"""Redis persistence of verifications."""

from otpsvc.store.connection import RedisClient, connect, parse_redis_url
from otpsvc.store.redis_store import CheckTicket, Reservation, VerificationStore

__all__ = [
    "CheckTicket",
    "RedisClient",
    "Reservation",
    "VerificationStore",
    "connect",
    "parse_redis_url",
]
