"""One test per input that broke a parser's contract (fuzz/__init__.py): found by the fuzz
harnesses or by the input-bounds audit of issue 7, fixed in the parser, kept here inline."""

from __future__ import annotations

import pytest

from attest.errors import ParseError
from attest.reasons import Reason
from attest.verify.pcrs import load_pcr_file
from attest.verify.policy import load_policy

# Seven levels of ten aliases each: 10**7 list elements from 300 bytes once expanded.
ALIAS_BOMB = "a: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{b}: &{b} [{','.join([f'*{a}'] * 10)}]\n" for a, b in zip("abcdef", "bcdefg", strict=True)
)


def test_policy_of_deeply_nested_brackets() -> None:
    """Audit: PyYAML composes nodes recursively, so `boot: [[[[...` (5000 deep, 10 KB, far
    under MAX_POLICY_BYTES) escaped load_policy as RecursionError, an unhandled 500 on upload."""
    with pytest.raises(ParseError, match="nested deeper than") as e:
        load_policy("version: 1\nname: x\nboot: " + "[" * 5000 + "]" * 5000)
    assert e.value.code is Reason.POLICY_INVALID


def test_policy_of_deeply_nested_mappings() -> None:
    with pytest.raises(ParseError, match="nested deeper than") as e:
        load_policy("version: 1\nname: x\nboot: " + "{a: " * 3000 + "1" + "}" * 3000)
    assert e.value.code is Reason.POLICY_INVALID


def test_policy_alias_bomb_in_a_field_an_error_message_prints() -> None:
    """Audit: `version: *g` loaded (PyYAML shares the aliased list), then the error message's
    repr expanded all 10**7 elements: a 52 MB message and 0.7 CPU-seconds from a 300-byte upload,
    ten times more for each line added."""
    with pytest.raises(ParseError, match="aliases") as e:
        load_policy(ALIAS_BOMB + "version: *g\nname: x\n")
    assert e.value.code is Reason.POLICY_INVALID


def test_pcr_yaml_of_deeply_nested_brackets() -> None:
    """Audit: the same RecursionError from tpm2_pcrread YAML (64 KiB of `[` fit MAX_PCR_FILE)."""
    with pytest.raises(ParseError, match="nested deeper than") as e:
        load_pcr_file(b"sha256: " + b"[" * 60_000)
    assert e.value.code is Reason.PCR_VALUES_MALFORMED


def test_pcr_yaml_alias_bomb_as_a_pcr_value() -> None:
    """Audit: a bad entry's error message printed the value's repr: an alias bomb there expanded."""
    with pytest.raises(ParseError, match="aliases") as e:
        load_pcr_file((ALIAS_BOMB + "sha256: {0: *g}\n").encode())
    assert e.value.code is Reason.PCR_VALUES_MALFORMED
