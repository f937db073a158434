"""TPM 2.0 structures (attest.verify.tpmstructs): TPMS_ATTEST, TPMT_SIGNATURE, TPM2B_PUBLIC.

The first input byte picks the structure (mod 3: attest, signature, public); the rest is the
structure. The parsers are strict (every byte accounted for, canonical sizes), so whatever
parses must marshal back to exactly the input.
"""

from __future__ import annotations

import contextlib

from attest.errors import ParseError
from attest.reasons import Reason
from attest.verify import tpmstructs
from fuzz import expect_code

STRUCTURES = ("attest", "signature", "public")


def one_input(data: bytes) -> None:
    if not data:
        return
    kind, body = STRUCTURES[data[0] % len(STRUCTURES)], data[1:]
    try:
        if kind == "attest":
            attest = tpmstructs.parse_attest(body)
            assert attest.marshal() == body
        elif kind == "signature":
            sig = tpmstructs.parse_signature(body)
            assert sig.marshal() == body
        else:
            public = tpmstructs.parse_public(body, Reason.AK_MALFORMED)
            assert public.marshal_tpm2b() == body
            public.name()
            with contextlib.suppress(ValueError):  # documented: `unique` need not be a valid key
                public.public_key()
    except ParseError as e:
        expect_code(e, Reason.QUOTE_MALFORMED, Reason.QUOTE_SIGNATURE_MALFORMED, Reason.AK_MALFORMED)
