"""The harness's logs through the verifier's parsers: two independent implementations must agree."""

from __future__ import annotations

import pytest

from attest.tcg import EventType
from attest.verify import eventlog, ima
from swtpm.imalog import simulate_ima
from swtpm.instance import SwtpmInstance
from swtpm.measuredboot import BootProfile, boot, named_profile, read_pcrs, simulate_boot

PROFILES = [
    *(named_profile(n) for n in ("good", "altered-kernel", "secureboot-off", "extra-driver")),
    BootProfile().with_startup_locality(3),
    BootProfile().with_cmdline("root=/dev/sda2 ro"),
]

# Events whose data is bound to the digest (so a verifier may use their content) and how.
_BOUND = {
    EventType.EV_S_CRTM_VERSION: "event-data",
    EventType.EV_EFI_VARIABLE_DRIVER_CONFIG: "event-data",
    EventType.EV_EFI_VARIABLE_AUTHORITY: "event-data",
    EventType.EV_SEPARATOR: "event-data",
    EventType.EV_EFI_ACTION: "event-data",
    EventType.EV_EFI_VARIABLE_BOOT: "variable-data",
}


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: f"{p.name}-loc{p.startup_locality}")
def test_verifier_replays_the_simulated_log(profile: BootProfile) -> None:
    simulated = simulate_boot(profile)
    log = eventlog.parse(simulated.log)
    assert log.startup_locality == (profile.startup_locality or None)
    assert eventlog.replay(log).pcrs == simulated.pcrs


def test_verifier_binds_exactly_the_events_whose_data_is_hashed() -> None:
    log = eventlog.parse(simulate_boot(BootProfile()).log)
    for event in log.events:
        if event.type == EventType.EV_NO_ACTION:
            continue
        coverage = None if event.coverage is None else event.coverage.value
        if event.type == EventType.EV_IPL:
            # grub's strings (PCR 8) are bound; for files (PCR 9) the digest is of the file, not its name.
            assert (coverage is not None) == (event.pcr == 8), event
        else:
            assert coverage == _BOUND.get(EventType(event.type)), event


def test_verifier_replays_the_ima_list_and_accepts_its_boot_aggregate(swtpm: SwtpmInstance) -> None:
    boot(swtpm, BootProfile())
    listed = simulate_ima(swtpm.tcti)
    parsed = ima.parse(listed.text().encode())
    state = ima.replay(parsed, ("sha1", "sha256"))
    tpm = read_pcrs(swtpm.tcti, ["sha1", "sha256"], range(11))
    assert {b: state.value(b, 10) for b in ("sha1", "sha256")} == {b: tpm[b][10] for b in ("sha1", "sha256")}
    ima.verify_boot_aggregate(parsed, {"sha256": {i: tpm["sha256"][i] for i in range(10)}})
