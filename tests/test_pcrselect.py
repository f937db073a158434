from __future__ import annotations

import pytest

from attest.pcrselect import PcrSelection


def test_parse_ranges_lists_and_banks_round_trip() -> None:
    sel = PcrSelection.parse("sha256:0-3,7,23+SHA1:10")
    assert sel.banks == (("sha256", (0, 1, 2, 3, 7, 23)), ("sha1", (10,)))
    assert str(sel) == "sha256:0,1,2,3,7,23+sha1:10"
    assert PcrSelection.parse(str(sel)) == sel
    assert list(sel)[:2] == [("sha256", 0), ("sha256", 1)]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sha256",
        "sha256:",
        "md5:0",
        "sha256:24",
        "sha256:-1",
        "sha256:5-3",
        "sha256:a",
        "sha256:0+sha256:1",
    ],
)
def test_bad_selections_are_refused_with_a_reason(text: str) -> None:
    with pytest.raises(ValueError, match=r".+"):
        PcrSelection.parse(text)
