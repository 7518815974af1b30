"""Everything keyed by the server secret: code verifiers and phone keys.

Codes are stored as argon2id(HMAC-SHA256(code key, id + code)): without the secret, which never
reaches Redis, a stolen record cannot even be attacked offline; with it, argon2 still costs each
guess. Phone numbers become keyed hashes so Redis never holds one in the clear.
"""

from __future__ import annotations

import hashlib
import hmac

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from otpsvc.config import Argon2Params

ARGON2_HEAD = "$argon2id$v=19$"


def _subkey(secret: bytes, purpose: str) -> bytes:
    return hmac.new(secret, f"otpsvc/{purpose}/v1".encode(), hashlib.sha256).digest()


class Keyring:
    def __init__(self, secret: bytes, argon2: Argon2Params) -> None:
        self._code_key = _subkey(secret, "code")
        self._phone_key = _subkey(secret, "phone")
        self._callback_key = _subkey(secret, "callback")
        self._hasher = PasswordHasher(
            time_cost=argon2.time_cost,
            memory_cost=argon2.memory_kib,
            parallelism=argon2.parallelism,
            hash_len=16,
            salt_len=16,
        )

    def phone_key(self, e164: str) -> str:
        """A stable keyed name for a number: 24 hex digits (96 bits)."""
        return hmac.new(self._phone_key, e164.encode(), hashlib.sha256).hexdigest()[:24]

    def callback_token(self, verification_id: str) -> str:
        """An unguessable token naming one verification, for provider callback URLs."""
        mac = hmac.new(self._callback_key, verification_id.encode(), hashlib.sha256)
        return f"{verification_id}.{mac.hexdigest()[:32]}"

    def verification_for_token(self, token: str) -> str | None:
        """The verification a callback token names, or None when the token was not made here."""
        verification_id, _, _ = token.partition(".")
        expected = self.callback_token(verification_id)
        # Bytes, not str: compare_digest refuses non-ASCII str, and a token comes from a stranger.
        same = hmac.compare_digest(expected.encode(), token.encode("utf-8", "surrogateescape"))
        return verification_id if same else None

    def _code_digest(self, verification_id: str, code: str) -> bytes:
        return hmac.new(
            self._code_key, f"{verification_id}:{code}".encode(), hashlib.sha256
        ).digest()

    def hash_code(self, verification_id: str, code: str) -> str:
        """The argon2id hash without its constant ``$argon2id$v=19$`` head.

        What remains (``m=16384,t=1,p=1$salt$hash``, 61 characters) fits Redis's compact hash
        encoding (values up to 64 bytes), which keeps a pending verification under 512 bytes.
        """
        encoded = str(self._hasher.hash(self._code_digest(verification_id, code)))
        if not encoded.startswith(ARGON2_HEAD):
            raise RuntimeError("unexpected argon2 encoding")
        return encoded[len(ARGON2_HEAD) :]

    def verify_code(self, verifier: str, verification_id: str, code: str) -> bool:
        """Constant-time by argon2's own comparison; any malformed verifier is a mismatch."""
        digest = self._code_digest(verification_id, code)
        try:
            return bool(self._hasher.verify(ARGON2_HEAD + verifier, digest))
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
