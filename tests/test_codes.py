"""Codes, ids and the stored verifier."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from otpsvc.config import Argon2Params
from otpsvc.core.codes import generate_code, new_verification_id
from otpsvc.core.keyring import Keyring

SAMPLES = 100_000
# Chi-square critical values at p = 1e-6: with seven tests per run a sound generator fails one of
# them about once in 140,000 runs (at p = 0.001 it was once in 140, so CI failed on chance).
CHI2_9DF = 44.81
CHI2_8DF = 42.70


def chi_square(counts: Counter, values: str) -> float:
    expected = sum(counts.values()) / len(values)
    return sum((counts[v] - expected) ** 2 / expected for v in values)


def test_codes_are_exact_length_and_uniform_per_digit():
    """10^5 six-digit codes: every length exact, each position uniform over 0-9."""
    codes = [generate_code(6) for _ in range(SAMPLES)]
    assert {len(c) for c in codes} == {6}
    assert all(c.isascii() and c.isdigit() for c in codes)
    for position in range(6):
        counts = Counter(c[position] for c in codes)
        assert chi_square(counts, "0123456789") < CHI2_9DF
    assert any(c.startswith("0") for c in codes)


def test_numeric_codes_never_start_with_zero_and_stay_uniform():
    """Without leading zeros the first digit is uniform over 1-9 and the others over 0-9."""
    codes = [generate_code(6, leading_zero=False) for _ in range(SAMPLES)]
    assert {len(c) for c in codes} == {6}
    first = Counter(c[0] for c in codes)
    assert "0" not in first
    expected = SAMPLES / 9
    assert sum((first[d] - expected) ** 2 / expected for d in "123456789") < CHI2_8DF
    assert chi_square(Counter(c[1] for c in codes), "0123456789") < CHI2_9DF


@pytest.mark.parametrize("length", [3, 9])
def test_lengths_outside_4_to_8_are_refused(length: int):
    """The generator refuses lengths the API does not allow."""
    with pytest.raises(ValueError, match="4 to 8"):
        generate_code(length)


def test_ids_carry_the_tag_and_128_random_bits():
    """An id is the 4-hex tag then 32 random hex digits; 10^4 ids never repeat."""
    ids = {new_verification_id("ab12") for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(re.fullmatch(r"ab12[0-9a-f]{32}", i) for i in ids)


@pytest.fixture(scope="module")
def keyring() -> Keyring:
    return Keyring(b"k" * 40, Argon2Params())


def test_verifier_matches_only_its_code_and_id(keyring: Keyring):
    """The verifier accepts its code for its id only: not another code, not another id."""
    verifier = keyring.hash_code("id-1", "123456")
    assert keyring.verify_code(verifier, "id-1", "123456")
    assert not keyring.verify_code(verifier, "id-1", "123457")
    assert not keyring.verify_code(verifier, "id-2", "123456")


def test_verifier_depends_on_the_server_secret(keyring: Keyring):
    """A verifier made with another secret never matches, even for the same id and code."""
    other = Keyring(b"o" * 40, Argon2Params())
    assert not keyring.verify_code(other.hash_code("id", "1234"), "id", "1234")


def test_verifier_is_salted_compact_and_states_its_cost(keyring: Keyring):
    """Two hashes of one code differ; each names its argon2 cost and fits in 64 bytes."""
    a, b = keyring.hash_code("id", "123456"), keyring.hash_code("id", "123456")
    assert a != b
    assert a.startswith("m=16384,t=1,p=1$")
    assert len(a) <= 64
    assert "123456" not in a


def test_malformed_verifier_is_a_mismatch(keyring: Keyring):
    """A damaged verifier is a wrong code, not an exception."""
    assert not keyring.verify_code("garbage", "id", "123456")
    assert not keyring.verify_code("", "id", "123456")


def test_phone_keys_are_keyed_and_stable(keyring: Keyring):
    """The same number gives the same key; the key is not the number and depends on the secret."""
    key = keyring.phone_key("+2348031234567")
    assert key == keyring.phone_key("+2348031234567")
    assert "2348031234567" not in key
    assert key != Keyring(b"o" * 40, Argon2Params()).phone_key("+2348031234567")
