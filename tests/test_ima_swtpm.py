"""The verifier against PCRs a (software) TPM actually holds: the harness measured a boot, then
extended IMA entries into PCR 10; the list must replay to what the TPM reports."""

from __future__ import annotations

from typing import TYPE_CHECKING

from attest.verify import ima
from swtpm.imalog import measure_files
from swtpm.measuredboot import read_pcrs

if TYPE_CHECKING:
    from conftest import BootedTpm


def test_ima_list_replays_to_the_tpms_pcr_10(swtpm_booted: BootedTpm) -> None:
    tcti = swtpm_booted.tpm.tcti
    pcrs = read_pcrs(tcti, ["sha1", "sha256"], range(11))
    log = ima.parse(swtpm_booted.ima_path.read_bytes())
    quoted = {bank: {10: values[10]} for bank, values in pcrs.items()}
    match = ima.match_quote(log, quoted)
    assert (len(match.accepted), match.pending) == (len(log.entries), ())
    assert match.state.variants == {"sha256": ima.BANK_HASH}
    assert ima.verify_boot_aggregate(log, pcrs) == ima.BOOT_AGGREGATE_AGILE

    # Files run after the quote: the longer list is accepted up to the quoted point, and the
    # next quote covers the rest, replayed from the stored state.
    longer = measure_files(tcti, swtpm_booted.ima, [("/usr/bin/late", b"late binary")])
    text = longer.text().encode()
    again = ima.match_quote(ima.parse(text), quoted)
    assert [e.path for e in again.pending] == ["/usr/bin/late"]
    now = read_pcrs(tcti, ["sha256"], [10])
    fragment = ima.parse(text.split(b"\n", again.state.offset)[-1], first_index=again.state.offset)
    last = ima.match_quote(fragment, {"sha256": {10: now["sha256"][10]}}, start=again.state)
    assert [e.path for e in last.accepted] == ["/usr/bin/late"]
