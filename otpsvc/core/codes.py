"""One-time codes and verification ids from the operating system's CSPRNG."""

from __future__ import annotations

import secrets


def generate_code(length: int, *, leading_zero: bool = True) -> str:
    """A uniform code of exactly ``length`` digits.

    Without ``leading_zero`` the first digit is 1-9, for providers that take the code as a number.
    """
    if not 4 <= length <= 8:
        raise ValueError("code length must be 4 to 8")
    if leading_zero:
        return f"{secrets.randbelow(10**length):0{length}d}"
    low = 10 ** (length - 1)
    return str(low + secrets.randbelow(9 * low))


def match_digits() -> str:
    """The two digits a match-mode app shows and the person keys on the call: 01 to 89, never
    00, and never 9 first (9 alone is the key that denies); uniform over those 89."""
    return f"{secrets.randbelow(89) + 1:02d}"


def new_verification_id(tag: str) -> str:
    """Four hex digits of the number's keyed hash (its store tag first), then 128 random bits:
    36 lowercase hex digits."""
    return tag + secrets.token_hex(16)
