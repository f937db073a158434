from __future__ import annotations

import re
from pathlib import Path

from attest.reasons import Reason

DOC = Path(__file__).parent.parent / "docs" / "reason-codes.md"


def test_every_reason_code_is_documented_and_nothing_else() -> None:
    documented = re.findall(r"^\| `([a-z0-9_]+)` \|", DOC.read_text(), re.M)
    assert len(documented) == len(set(documented))
    assert set(documented) == {r.value for r in Reason}
