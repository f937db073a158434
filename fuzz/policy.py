"""Reference policy documents (attest.verify.policy): YAML from an administrator's upload.

A document that loads must dump to YAML that loads back to an equal policy.
"""

from __future__ import annotations

from attest.errors import ParseError
from attest.reasons import Reason
from attest.verify import policy
from fuzz import expect_code


def one_input(data: bytes) -> None:
    try:
        loaded = policy.load_policy(data)
    except ParseError as e:
        expect_code(e, Reason.POLICY_INVALID)
        return
    assert policy.load_policy(policy.dump_policy(loaded)) == loaded
