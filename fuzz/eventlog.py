"""TCG event log (attest.verify.eventlog, efi): parse, replay, decode, judge Secure Boot.

A log that parses must replay (with and without the firmware workarounds), every event must
decode and serialize, and the replay must be the fold of the logged digests.
"""

from __future__ import annotations

import functools
import json

from attest.errors import ParseError
from attest.tcg import PCR_COUNT, EventType, pcr_reset_value
from attest.verify import eventlog, policy, workarounds

_RULES = """
boot:
  secure_boot: true
  pk: []
  kek: []
  db: []
  dbx_includes: []
  efi_applications: []
  efi_drivers: []
  event_digests: {8: [], 9: []}
  kernel_cmdline: ["root=/dev/sda1 ro quiet"]
"""


@functools.cache
def _policy(bank: str) -> policy.Policy:
    return policy.load_policy(f"version: 1\nname: fuzz\nbank: {bank}\nallow_sha1: true\n{_RULES}")


def one_input(data: bytes) -> None:
    try:
        log = eventlog.parse(data)
    except ParseError:
        return
    plain = eventlog.replay(log)
    eventlog.replay(log, workarounds.WORKAROUNDS)
    for event in log.events:
        json.dumps(event.to_json())
    policy.secure_boot_state(log.events)
    for name in ("sha1", "sha256"):
        if name in plain.pcrs:
            # The log judged against itself: every rule runs over every replayed event.
            policy.evaluate_boot(_policy(name), log, plain.pcrs[name], frozenset(plain.pcrs[name]))
    for bank in log.banks:
        if bank.new is None:
            assert bank.name in plain.unreplayable
            continue
        values = [pcr_reset_value(i, bank.size) for i in range(PCR_COUNT)]
        if log.startup_locality:
            values[0] = bytes(bank.size - 1) + bytes((log.startup_locality,))
        for event in log.events:
            if event.type != EventType.EV_NO_ACTION:
                values[event.pcr] = bank.new(values[event.pcr] + event.digests[bank.name]).digest()
        assert plain.pcrs[bank.name] == dict(enumerate(values)), bank.name
