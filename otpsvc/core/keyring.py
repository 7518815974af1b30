"""Everything keyed by the server secret: code verifiers and phone keys.

Codes are stored as argon2id(HMAC-SHA256(code key, id + code)): without the secret, which never
reaches Redis, a stolen record cannot even be attacked offline; with it, argon2 still costs each
guess. Phone numbers become keyed hashes so Redis never holds one in the clear.

Rotation: the keyring holds the current secret and any earlier ones (``fallbacks``). Everything new
is made under the current secret; a code verifier names the secret it was made under (the first two
bytes of its salt are that secret's id, so the record grows by nothing), and callback tokens and
phone keys made under an earlier secret are still recognised, until what they belong to expires and
the earlier secret is removed from the settings.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import threading
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from argon2.low_level import Type, hash_secret
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from otpsvc import metrics
from otpsvc.config import Argon2Params
from otpsvc.core.addresses import pack_bucket, unpack_bucket
from otpsvc.telemetry import span

ARGON2_HEAD = "$argon2id$v=19$"
SALT_BYTES = 16
KEY_ID_BYTES = 2


def _subkey(secret: bytes, purpose: str) -> bytes:
    return hmac.new(secret, f"otpsvc/{purpose}/v1".encode(), hashlib.sha256).digest()


def key_id(secret: bytes) -> str:
    """A short public name for a secret (4 hex digits), so a verifier can say which one made it."""
    return _subkey(secret, "id").hex()[: 2 * KEY_ID_BYTES]


def _person_nonce(verification_id: str) -> bytes:
    return hashlib.sha256(b"person\0" + verification_id.encode()).digest()[:12]


@dataclass(frozen=True)
class Person:
    """Whom a verification with a ladder was started for, as its later steps count them: their
    address (its limit bucket) and the keyed name of their account (``subject_key("user",
    ...)``, what the per-account limit counts), None without one."""

    ip: str
    user_key: str | None = None


class _Keys:
    def __init__(self, secret: bytes) -> None:
        self.id = key_id(secret)
        self.code = _subkey(secret, "code")
        self.phone = _subkey(secret, "phone")
        self.callback = _subkey(secret, "callback")
        self.subject = _subkey(secret, "subject")
        self.seal = _subkey(secret, "seal")


class Keyring:
    def __init__(
        self, secret: bytes, argon2: Argon2Params, fallbacks: tuple[bytes, ...] = ()
    ) -> None:
        self._keys = [_Keys(secret), *(_Keys(earlier) for earlier in fallbacks)]
        self._current = self._keys[0]
        self._by_id = {k.id: k for k in reversed(self._keys)}
        self._argon2 = argon2
        #: At most ``argon2.concurrency`` runs at once in this process: a burst of checks
        #: queues here instead of holding a 16 MiB block per thread (docs/deploying.md).
        self._argon2_slots = threading.BoundedSemaphore(argon2.concurrency)
        self._hasher = PasswordHasher(
            time_cost=argon2.time_cost,
            memory_cost=argon2.memory_kib,
            parallelism=argon2.parallelism,
            hash_len=16,
            salt_len=SALT_BYTES,
        )

    def seal_phone(self, verification_id: str, e164: str) -> str:
        """The number, encrypted (AES-256-GCM, bound to the verification's id) under the current
        secret: ``<secret id>.<base64 nonce + ciphertext>``. A verification with an escalation
        ladder keeps it until it ends, to place its later steps; without the secret, which never
        reaches Redis, it gives nothing back."""
        return self._seal(e164, verification_id)

    def open_phone(self, verification_id: str, sealed: str) -> str | None:
        """The number :meth:`seal_phone` sealed for this verification; None when it cannot be
        opened (another verification's, a removed secret, tampered)."""
        return self._open(sealed, verification_id)

    def seal_text(self, verification_id: str, purpose: str, text: str) -> str:
        """``text`` sealed like a number, bound to the verification and to ``purpose``: what
        must be kept for a while but never in the clear (a match start's digits in its
        idempotent answer)."""
        return self._seal(text, f"{purpose}:{verification_id}")

    def open_text(self, verification_id: str, purpose: str, sealed: str) -> str | None:
        """What :meth:`seal_text` sealed for this verification and purpose; None otherwise."""
        return self._open(sealed, f"{purpose}:{verification_id}")

    def _seal(self, plain: str, bound: str) -> str:
        nonce = secrets.token_bytes(12)
        sealed = AESGCM(self._current.seal).encrypt(nonce, plain.encode(), bound.encode())
        # Unpadded: the field stays under 64 bytes, so Redis keeps the record's hash compact.
        body = base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")
        return f"{self._current.id}.{body}"

    def _open(self, sealed: str, bound: str) -> str | None:
        secret_id, _, body = sealed.partition(".")
        keys = self._by_id.get(secret_id)
        if keys is None:
            return None
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            plain = AESGCM(keys.seal).decrypt(raw[:12], raw[12:], bound.encode())
        except (binascii.Error, ValueError, InvalidTag):
            return None
        return plain.decode()

    def seal_person(self, verification_id: str, person: Person) -> str:
        """The person a ladder's verification was started for, sealed like the number, in a
        field of its own that stays under Redis's 64 bytes for a compact hash: the bucket
        packed, the account's keyed name as bytes, and no nonce stored (it is derived from the
        verification id, which is sealed once: a nonce is never used twice under one key)."""
        account = bytes.fromhex(person.user_key) if person.user_key else b""
        plain = pack_bucket(person.ip) + account
        sealed = AESGCM(self._current.seal).encrypt(
            _person_nonce(verification_id), plain, verification_id.encode()
        )
        return f"{self._current.id}.{base64.urlsafe_b64encode(sealed).decode().rstrip('=')}"

    def open_person(self, verification_id: str, sealed: str) -> Person:
        """The person :meth:`seal_person` sealed; an unknown person for a verification sealed
        without one (or under a secret no longer configured)."""
        secret_id, _, body = sealed.partition(".")
        keys = self._by_id.get(secret_id)
        if keys is None:
            return Person("unknown")
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            plain = AESGCM(keys.seal).decrypt(
                _person_nonce(verification_id), raw, verification_id.encode()
            )
        except (binascii.Error, ValueError, InvalidTag):
            return Person("unknown")
        bucket, user = unpack_bucket(plain)
        return Person(bucket, user.hex() if user else None)

    @staticmethod
    def _key_id_of(verifier: str) -> str:
        """The secret id in a verifier's salt (``params$salt$hash``, unpadded base64)."""
        parts = verifier.split("$")
        if len(parts) != 3:
            return ""
        try:
            salt = base64.b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        except (binascii.Error, ValueError):
            return ""
        return salt[:KEY_ID_BYTES].hex()

    def phone_key(self, e164: str) -> str:
        """A stable keyed name for a number: 24 hex digits (96 bits)."""
        return self._phone_key(self._current, e164)

    def earlier_phone_keys(self, e164: str) -> list[str]:
        """The number's keys under the earlier secrets (blocks made under them still count)."""
        return [self._phone_key(keys, e164) for keys in self._keys[1:]]

    @staticmethod
    def _phone_key(keys: _Keys, e164: str) -> str:
        return hmac.new(keys.phone, e164.encode(), hashlib.sha256).hexdigest()[:24]

    def subject_key(self, kind: str, value: str) -> str:
        """A keyed name for what a limit counts (an end-user IP network, an account id): Redis
        holds no address and no account id in the clear."""
        mac = hmac.new(self._current.subject, f"{kind}\0{value}".encode(), hashlib.sha256)
        return mac.hexdigest()[:24]

    def callback_token(self, verification_id: str, gen: int, kind: str) -> str:
        """An unguessable token for one callback endpoint (``kind``: status, dtmf) of one send
        (``gen``) of one verification: a token seen in a log cannot act on another endpoint or
        on a later send."""
        return self._callback_token(self._current, verification_id, gen, kind)

    @staticmethod
    def _callback_token(keys: _Keys, verification_id: str, gen: int, kind: str) -> str:
        message = f"{kind}:{verification_id}:{gen}".encode()
        mac = hmac.new(keys.callback, message, hashlib.sha256)
        return f"{verification_id}.{gen}.{mac.hexdigest()[:32]}"

    @property
    def current_id(self) -> str:
        """The id of the secret everything new is made under."""
        return self._current.id

    def verify_callback_token(self, token: str, kind: str) -> tuple[str, int, str] | None:
        """(verification id, send generation, id of the secret that made it) a token names for
        this endpoint, or None when the token was not made here for it. The caller holds the
        token to the send's own secret: an earlier secret (kept for what was made under it) must
        not forge tokens for sends made after the rotation."""
        verification_id, _, rest = token.partition(".")
        gen_text, _, _ = rest.partition(".")
        if not gen_text.isascii() or not gen_text.isdecimal() or len(gen_text) > 6:
            return None
        gen = int(gen_text)
        # Bytes, not str: compare_digest refuses non-ASCII str, and a token comes from a stranger.
        presented = token.encode("utf-8", "surrogateescape")
        made_by = ""
        for keys in self._keys:
            expected = self._callback_token(keys, verification_id, gen, kind).encode()
            if hmac.compare_digest(expected, presented):
                made_by = keys.id
        return (verification_id, gen, made_by) if made_by else None

    @staticmethod
    def _code_digest(keys: _Keys, verification_id: str, code: str) -> bytes:
        return hmac.new(keys.code, f"{verification_id}:{code}".encode(), hashlib.sha256).digest()

    def hash_code(self, verification_id: str, code: str) -> str:
        """The argon2id hash without its constant ``$argon2id$v=19$`` head.

        What remains (``m=16384,t=1,p=1$salt$hash``, 61 characters) fits Redis's compact hash
        encoding (values up to 64 bytes), which keeps a pending verification under 512 bytes.
        """
        digest = self._code_digest(self._current, verification_id, code)
        # The salt: the current secret's id, then 112 random bits (unique per verifier).
        salt = bytes.fromhex(self._current.id) + secrets.token_bytes(SALT_BYTES - KEY_ID_BYTES)
        params = self._argon2
        with self._argon2_slots, span("argon2 hash"), metrics.argon2_run("hash"):
            encoded = hash_secret(
                digest, salt, params.time_cost, params.memory_kib, params.parallelism, 16, Type.ID
            ).decode()
        if not encoded.startswith(ARGON2_HEAD):
            raise RuntimeError("unexpected argon2 encoding")
        return encoded[len(ARGON2_HEAD) :]

    def verify_code(self, verifier: str, verification_id: str, code: str) -> bool:
        """Constant-time by argon2's own comparison; any malformed verifier is a mismatch.

        The verifier's salt names the secret it was made under; one argon2 run either way. A
        verifier of a secret no longer configured (or older than key ids) is tried with the
        current secret, which fails for the former.
        """
        keys = self._by_id.get(self._key_id_of(verifier), self._current)
        digest = self._code_digest(keys, verification_id, code)
        try:
            with self._argon2_slots, span("argon2 verify"), metrics.argon2_run("verify"):
                return bool(self._hasher.verify(ARGON2_HEAD + verifier, digest))
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
